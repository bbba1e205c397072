"""The service's store, timed: every append this process makes goes through ``MeasuredStore``.

A wrapper in the service rather than a hook in the core: the core stays free of Prometheus and
of observer registries, and every writer in the process (routes, signals, an in-process engine
and its workers) already receives the store the service opened, so wrapping it once covers
them all. Anything that is not part of the port (``config``, the outbox calls) is passed
through untouched.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from dvt_api.metrics import ApiMetrics
from dvt_engine.models.events import AppendResult, Event
from dvt_engine.models.run import RunHeader, RunStatus, RunSummary
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore, TenantCursor, TenantEvent

#: Called with each event this process appended (not a duplicate), with its place in the log.
AppendListener = Callable[[Event], Awaitable[None]]


class MeasuredStore(RunStateStore):
    """Delegates to ``inner``; times appends into ``dvt_store_append_duration_seconds``."""

    def __init__(self, inner: RunStateStore, metrics: ApiMetrics) -> None:
        self.inner = inner
        self._metrics = metrics
        self._listeners: list[AppendListener] = []

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks: the store's own extras (config, outbox).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def on_append(self, listener: AppendListener) -> None:
        """Also hand every newly appended event to ``listener`` (after the append returned)."""
        self._listeners.append(listener)

    async def _timed(self, op: str, call: Awaitable[Any]) -> Any:
        began = time.perf_counter()
        outcome = "error"
        try:
            result = await call
            outcome = "ok"
            return result
        finally:
            self._metrics.store_append.labels(op, outcome).observe(time.perf_counter() - began)

    async def _tell(self, event: Event, result: AppendResult | None) -> None:
        if result is None or result.duplicate or not self._listeners:
            return
        stored = event.model_copy(update={"run_seq": result.run_seq,
                                          "persisted_at": result.persisted_at})
        for listener in self._listeners:
            await listener(stored)

    # --- appends: timed -------------------------------------------------------------------
    async def append(self, event: Event) -> AppendResult:
        """Append one event (timed)."""
        result: AppendResult = await self._timed("append", self.inner.append(event))
        await self._tell(event, result)
        return result

    async def append_if_last(self, event: Event, expected_last_seq: int) -> AppendResult | None:
        """Append while the run is at ``expected_last_seq`` (timed)."""
        result: AppendResult | None = await self._timed(
            "append_if_last", self.inner.append_if_last(event, expected_last_seq))
        await self._tell(event, result)
        return result

    async def append_batch(self, events: Sequence[Event]) -> list[AppendResult]:
        """Append many events (timed as one call)."""
        results: list[AppendResult] = await self._timed(
            "append_batch", self.inner.append_batch(events))
        for event, result in zip(events, results, strict=True):
            await self._tell(event, result)
        return results

    async def append_batch_if_last(
        self, events: Sequence[Event], expected_last_seq: int
    ) -> list[AppendResult] | None:
        """Append events of one run while it is at ``expected_last_seq`` (timed as one call)."""
        results: list[AppendResult] | None = await self._timed(
            "append_batch_if_last", self.inner.append_batch_if_last(events, expected_last_seq))
        for event, result in zip(events, results or [], strict=False):
            await self._tell(event, result)
        return results

    async def register_run(self, header: RunHeader) -> tuple[RunHeader, bool]:
        """Record a new run (timed: it is the run's first write)."""
        made: tuple[RunHeader, bool] = await self._timed("register_run",
                                                          self.inner.register_run(header))
        return made

    # --- everything else: delegated -------------------------------------------------------
    async def get_run(self, tenant_id: str, run_id: str) -> RunHeader | None:
        """Delegated."""
        return await self.inner.get_run(tenant_id, run_id)

    async def list_runs(self, tenant_id: str, *, status: Sequence[RunStatus] | None = None,
                        project_id: str | None = None, environment_id: str | None = None,
                        limit: int = 100, before: tuple[datetime, str] | None = None,
                        **filters: Any) -> list[RunSummary]:
        """Delegated (filters a newer store accepts pass through)."""
        return await self.inner.list_runs(tenant_id, status=status, project_id=project_id,
                                          environment_id=environment_id, limit=limit,
                                          before=before, **filters)

    async def fetch_events(self, tenant_id: str, run_id: str, *, after_seq: int = 0,
                           limit: int | None = None) -> list[Event]:
        """Delegated."""
        return await self.inner.fetch_events(tenant_id, run_id, after_seq=after_seq,
                                             limit=limit)

    async def get_event_by_key(self, tenant_id: str, run_id: str,
                               idempotency_key: str) -> Event | None:
        """Delegated."""
        return await self.inner.get_event_by_key(tenant_id, run_id, idempotency_key)

    def follow(self, tenant_id: str, run_id: str | None = None, *,
               after_seq: int = 0) -> AsyncIterator[Event]:
        """Delegated."""
        return self.inner.follow(tenant_id, run_id, after_seq=after_seq)

    def follow_tenant(self, tenant_id: str, *,
                      after: TenantCursor | None = None) -> AsyncIterator[TenantEvent]:
        """Delegated."""
        return self.inner.follow_tenant(tenant_id, after=after)

    async def get_snapshot(self, tenant_id: str, run_id: str) -> RunSnapshot | None:
        """Delegated."""
        return await self.inner.get_snapshot(tenant_id, run_id)

    async def project(self, tenant_id: str, run_id: str) -> RunSnapshot:
        """Delegated."""
        return await self.inner.project(tenant_id, run_id)

    async def put_plan(self, data: bytes) -> str:
        """Delegated."""
        return await self.inner.put_plan(data)

    async def get_plan(self, sha256: str) -> bytes | None:
        """Delegated."""
        return await self.inner.get_plan(sha256)

    async def close(self) -> None:
        """Close the wrapped store."""
        await self.inner.close()
