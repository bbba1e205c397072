"""Whether this process reaches its engine: one probe shared by /metrics and /readyz.

The probe runs on demand (a scrape or a readiness check), never on a timer, and at most once
per ``ttl_s`` however often it is asked, with one probe in flight: concurrent callers wait for
it and share its answer. A failed probe is cached like a good one, so an engine that times
out is asked once per ``ttl_s``, not once per request. Unlike the store's gauges this
describes the process (its network path to the engine): aggregate ``dvt_engine_up`` with
``min``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dvt_api.metrics import ApiMetrics
from dvt_engine.errors import DvtError

log = logging.getLogger("dvt_api")
#: How long a probe's answer is reused.
ENGINE_PROBE_TTL_S = 5.0
#: A backstop over the engine's own probe timeout (2 s in the adapters): a probe that hangs
#: must not hold /readyz and every scrape behind the lock.
PROBE_DEADLINE_S = 10.0

Probe = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class EngineHealth:
    """One probe's answer: ``reason`` is an error code or exception name when not ``up``."""

    engine: str
    up: bool
    reason: str = ""


def probe_for(engine: object) -> Probe | None:
    """The engine's ``check_ready``, or None for an in-process engine (always up)."""
    probe = getattr(engine, "check_ready", None)
    return probe if callable(probe) else None


class EngineProbe:
    """Probes the engine at most once per ``ttl_s``, one probe at a time; sets the gauge."""

    def __init__(self, engine: str, probe: Probe | None, metrics: ApiMetrics,
                 ttl_s: float = ENGINE_PROBE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probe, self._metrics, self._ttl, self._clock = probe, metrics, ttl_s, clock
        self.engine = engine
        self._label = metrics.engine_label(engine)
        self._lock = asyncio.Lock()
        self._last: EngineHealth | None = None
        self._at = 0.0
        self.probes = 0

    async def check(self) -> EngineHealth:
        """The engine's health, probed now unless the last answer is under ``ttl_s`` old."""
        async with self._lock:  # concurrent callers share one probe
            if self._last is not None and self._clock() - self._at < self._ttl:
                return self._last
            health = await self._run()
            self._last, self._at = health, self._clock()
            self._metrics.engine_up.labels(self._label).set(1 if health.up else 0)
            return health

    async def _run(self) -> EngineHealth:
        if self._probe is None:
            return EngineHealth(self.engine, True)
        self.probes += 1
        try:
            await asyncio.wait_for(self._probe(), PROBE_DEADLINE_S)
        except Exception as exc:  # any failure means "not reachable now"; the next probe retries
            reason = exc.code.value if isinstance(exc, DvtError) else type(exc).__name__
            if self._last is None or self._last.up:  # log the change, not every probe
                log.warning("engine not ready", extra={"code": reason, "engine": self.engine})
            return EngineHealth(self.engine, False, reason)
        if self._last is not None and not self._last.up:
            log.info("engine ready again", extra={"engine": self.engine})
        return EngineHealth(self.engine, True)
