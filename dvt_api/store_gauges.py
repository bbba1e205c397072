"""Gauges read from the store when /metrics is scraped, cached so a fast scraper cannot load it.

Active runs, snapshot lag and the outbox backlog describe the shared store, not this process:
every ``dvt serve`` on the store reports the same values (aggregate them with ``max``, not
``sum``). They are read on demand rather than on a timer, so a service nobody scrapes sends
no queries for them, and at most once per ``ttl_s`` however often it is scraped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dvt_api.metrics import ApiMetrics
from dvt_engine.ports import RunStateStore

log = logging.getLogger("dvt_api")
#: How long a read of the store's gauges is reused.
STATS_TTL_S = 5.0

Reader = Callable[[], Awaitable[Any]]


def reader_for(store: RunStateStore) -> Reader | None:
    """How to read ``store``'s gauges, or None for a store without them (in-memory)."""
    config = getattr(store, "config", None)
    if config is None or not hasattr(config, "schema") or not hasattr(store, "claim_outbox"):
        return None
    from dvt_statestore_pg.stats import read_stats

    inner: Any = getattr(store, "inner", store)
    return lambda: read_stats(inner)


class StoreGauges:
    """Refreshes the store-wide gauges at most once per ``ttl_s``, one read at a time."""

    def __init__(self, read: Reader | None, metrics: ApiMetrics, ttl_s: float = STATS_TTL_S
                 ) -> None:
        self._read, self._metrics, self._ttl = read, metrics, ttl_s
        self._lock = asyncio.Lock()
        self._read_at: float | None = None
        self._engines: set[str] = set()
        self.reads = 0

    async def refresh(self) -> None:
        """Bring the gauges up to date unless they were read less than ``ttl_s`` ago."""
        if self._read is None:
            return
        async with self._lock:  # concurrent scrapes share one read
            if self._read_at is not None and time.monotonic() - self._read_at < self._ttl:
                return
            self._read_at = time.monotonic()
            try:
                stats = await self._read()
            except Exception as exc:  # the scrape still answers, with the last values
                log.warning("store gauges unavailable", extra={"code": type(exc).__name__})
                return
            self.reads += 1
            self._apply(stats)

    def _apply(self, stats: Any) -> None:
        m = self._metrics
        active: dict[str, int] = {}
        for engine, count in stats.active_runs.items():
            label = m.engine_label(engine)
            active[label] = active.get(label, 0) + count
        for label in self._engines - set(active):  # engines with no active run any more
            m.runs_active.labels(label).set(0)
        for label, count in active.items():
            m.runs_active.labels(label).set(count)
        self._engines |= set(active)
        m.snapshot_lag.set(stats.snapshot_lag)
        m.outbox_depth.set(stats.outbox_depth)
        m.outbox_oldest_age.set(stats.outbox_oldest_age_s)
