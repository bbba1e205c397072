"""Run metrics and run state log lines, from the store's committed events.

Which process counts an event: with a PostgreSQL store that keeps an outbox (the default),
every committed event is taken from the outbox by exactly one ``dvt serve`` process (the
webhook intake leases rows with ``FOR UPDATE SKIP LOCKED``), and that process counts it and
writes its run state line after acknowledging it. So a run started through one process and
finished by a worker elsewhere is counted once, summing the counters of N processes gives the
store's totals, and an idle process does no extra work (the intake already sleeps on
LISTEN/NOTIFY). Without an outbox (the in-memory dev store, or ``outbox=false``) the process
counts the events it appended itself, which is all of them for a single dev process.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Generic, TypeVar

from dvt_api.metrics import ApiMetrics
from dvt_engine.eventlog import utc_now
from dvt_engine.models.events import TERMINAL_RUN_EVENTS, Event, EventType
from dvt_engine.ports import RunStateStore

log = logging.getLogger("dvt_api.runs")

#: The W3C trace id of the request being served (set by the request middleware), so a run
#: started or steered by a request can be logged with that request's trace.
TRACE_ID: ContextVar[str | None] = ContextVar("dvt_trace_id", default=None)

#: The run status each run state event leads to.
RUN_STATES: dict[str, str] = {
    EventType.RUN_APPROVED: "APPROVED", EventType.RUN_STARTED: "RUNNING",
    EventType.RUN_PAUSED: "PAUSED", EventType.RUN_RESUMED: "RUNNING",
    EventType.RUN_COMPLETED: "COMPLETED", EventType.RUN_FAILED: "FAILED",
    EventType.RUN_CANCELLED: "CANCELLED",
}
_STEP_OUTCOMES: dict[str, str] = {EventType.STEP_COMPLETED: "completed",
                                  EventType.STEP_FAILED: "failed"}
#: Runs and steps remembered between their events (engine, trace id, step start); a miss
#: costs one read of the store, never a wrong number.
CACHE_SIZE = 10_000

_K = TypeVar("_K")
_V = TypeVar("_V")


class _Lru(Generic[_K, _V]):
    def __init__(self, size: int) -> None:
        self._items: OrderedDict[_K, _V] = OrderedDict()
        self._size = size

    def get(self, key: _K) -> _V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: _K) -> None:
        self._items.pop(key, None)


def _when(event: Event) -> datetime:
    """When the producer says the event happened (the projector's clock for durations)."""
    return event.occurred_at or event.emitted_at


class RunObserver:
    """Turns committed events into run counters, step durations and run state log lines."""

    def __init__(self, store: RunStateStore, metrics: ApiMetrics) -> None:
        self._store, self._metrics = store, metrics
        self._engines: _Lru[tuple[str, str], str] = _Lru(CACHE_SIZE)
        self._traces: _Lru[tuple[str, str], str] = _Lru(CACHE_SIZE)
        self._starts: _Lru[tuple[str, str, str, int], tuple[str, datetime]] = _Lru(CACHE_SIZE)

    async def appended(self, event: Event) -> None:
        """This process appended ``event``: remember the request's trace id for its run."""
        trace_id = TRACE_ID.get()
        if trace_id is not None:
            self._traces.put((event.tenant_id, event.run_id), trace_id)

    async def committed(self, events: Sequence[Event], *, reader: str | None = None) -> None:
        """Count committed events (``reader``: which reader took them, for the lag)."""
        now = utc_now()
        for event in events:
            if reader is not None and event.persisted_at is not None:
                lag = max(0.0, (now - event.persisted_at).total_seconds())
                self._metrics.projection_lag.labels(reader).observe(lag)
            try:
                await self._count(event)
            except Exception as exc:  # a metric is lost, the events are still acknowledged
                log.warning("run metrics of an event failed",
                            extra={"code": type(exc).__name__, "run_id": event.run_id})

    async def _count(self, event: Event) -> None:
        kind = event.event_type
        run = (event.tenant_id, event.run_id)
        if kind == EventType.RUN_STARTED:
            engine = str(event.payload.get("engine") or "unknown")
            self._engines.put(run, engine)
            self._metrics.runs_started.labels(self._metrics.engine_label(engine)).inc()
        if kind == EventType.STEP_STARTED and event.step_id is not None:
            step = (*run, event.step_id, event.logical_attempt_id)
            self._starts.put(step, (str(event.payload.get("kind") or "unknown"), _when(event)))
        elif kind in _STEP_OUTCOMES:
            await self._step_done(event, _STEP_OUTCOMES[kind])
        if kind in RUN_STATES:
            engine = await self._engine_of(event)
            if kind in TERMINAL_RUN_EVENTS:
                self._metrics.runs_finished.labels(
                    RUN_STATES[kind], self._metrics.engine_label(engine)).inc()
            self._log_state(event, engine)
            if kind in TERMINAL_RUN_EVENTS:
                self._engines.pop(run)
                self._traces.pop(run)

    async def _engine_of(self, event: Event) -> str:
        run = (event.tenant_id, event.run_id)
        engine = self._engines.get(run)
        if engine is None:
            header = await self._store.get_run(*run)
            engine = header.engine if header is not None else "unknown"
            self._engines.put(run, engine)
        return engine

    async def _step_done(self, event: Event, outcome: str) -> None:
        if event.step_id is None:
            return
        step = (event.tenant_id, event.run_id, event.step_id, event.logical_attempt_id)
        start = self._starts.get(step)
        if start is None:  # its StepStarted went to another process, or before a restart
            start = await self._find_start(event)
        if start is None:
            return
        self._starts.pop(step)
        kind, started_at = start
        seconds = max(0.0, (_when(event) - started_at).total_seconds())
        self._metrics.step_duration.labels(self._metrics.kind_label(kind), outcome).observe(
            seconds)

    async def _find_start(self, event: Event) -> tuple[str, datetime] | None:
        # The stored snapshot keeps the current attempt's start; the header names the kind.
        # Two reads whatever the run's length, and only for a step whose start this process
        # did not see.
        snapshot = await self._store.get_snapshot(event.tenant_id, event.run_id)
        step = next((s for s in snapshot.steps if s.step_id == event.step_id), None) \
            if snapshot is not None else None
        if step is None or step.started_at is None \
                or step.logical_attempt_id != event.logical_attempt_id:
            return None
        header = await self._store.get_run(event.tenant_id, event.run_id)
        kind = next((s.kind for s in header.steps if s.step_id == event.step_id), "unknown") \
            if header is not None else "unknown"
        return kind, step.started_at

    def _log_state(self, event: Event, engine: str) -> None:
        # Identity and status only: payloads (reasons, messages) may quote user text.
        code = event.payload.get("code") if event.event_type == EventType.RUN_FAILED else None
        log.info("run state", extra={
            "tenant_id": event.tenant_id, "run_id": event.run_id, "engine": engine,
            "trace_id": self._traces.get((event.tenant_id, event.run_id)),
            "event_type": event.event_type, "run_status": RUN_STATES[event.event_type],
            "run_seq": event.run_seq, "plan_id": event.plan_id,
            "code": code if isinstance(code, str) else None})
