"""The in-memory state store: the full store contract, for tests, the CLI and embedding hosts.

Safe under concurrent asyncio tasks of one event loop: every mutation happens under one lock,
and followers wait on a condition that appends notify. Appends take the lock in turn, so the
order of the store-wide log is the commit order and a tenant cursor is a position in it.
"""

from __future__ import annotations

import asyncio
import hashlib
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TypeVar

from dvt_engine.errors import RunNotFound, UsageError
from dvt_engine.event_validation import prepared_for_storage
from dvt_engine.eventlog import utc_now
from dvt_engine.labels import matches as label_filter_matches
from dvt_engine.models.events import AppendResult, Event
from dvt_engine.models.run import RunHeader, RunStatus, RunSummary
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import TENANT_LOG_START, RunStateStore, TenantCursor, TenantEvent
from dvt_engine.projector import Projection, initial_snapshot, project
from dvt_engine.stores.fingerprint import refuse_conflict
from dvt_engine.stores.memory_webhooks import MemoryOutbox, OutboxItem

PLAN_URI_PREFIX = "plan://sha256/"
_T = TypeVar("_T")


@dataclass
class _Run:
    header: RunHeader
    projection: Projection
    events: list[Event] = field(default_factory=list)
    by_key: dict[str, Event] = field(default_factory=dict)
    next_seq: int = 1
    updated_at: datetime = field(default_factory=utc_now)

    @property
    def snapshot(self) -> RunSnapshot:
        """The run's current snapshot (built when first asked for after an append)."""
        return self.projection.snapshot()


class MemoryRunStateStore(RunStateStore):
    """A RunStateStore held in process memory; ``open_store("memory://")`` returns one."""

    def __init__(self, url: str = "memory://", **_options: object) -> None:
        self.url = url
        self._runs: dict[tuple[str, str], _Run] = {}
        self._by_request: dict[tuple[str, str], str] = {}
        self._plans: dict[str, bytes] = {}
        # Every event of every tenant in commit order; a tenant cursor is an index into it.
        self._all_events: list[Event] = []
        self._outbox = MemoryOutbox(self._all_events)
        self._lock = asyncio.Lock()
        self._appended = asyncio.Condition(self._lock)

    # --- runs ---------------------------------------------------------------------------
    async def register_run(self, header: RunHeader) -> tuple[RunHeader, bool]:
        """Record a new run; idempotent on (tenantId, runRequestKey)."""
        async with self._lock:
            existing_id = self._by_request.get((header.tenant_id, header.run_request_key))
            if existing_id is not None:
                return self._runs[(header.tenant_id, existing_id)].header, False
            if (header.tenant_id, header.run_id) in self._runs:
                raise UsageError(
                    f"runId {header.run_id!r} is already used by another run request",
                    details={"runId": header.run_id},
                )
            self._runs[(header.tenant_id, header.run_id)] = _Run(
                header=header, projection=Projection(initial_snapshot(header))
            )
            self._by_request[(header.tenant_id, header.run_request_key)] = header.run_id
            return header, True

    async def get_run(self, tenant_id: str, run_id: str) -> RunHeader | None:
        """The header of a run of this tenant, or None."""
        run = self._owned(tenant_id, run_id)
        return run.header if run else None

    async def list_runs(
        self,
        tenant_id: str,
        *,
        status: Sequence[RunStatus] | None = None,
        project_id: str | None = None,
        environment_id: str | None = None,
        plan_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        before: tuple[datetime, str] | None = None,
    ) -> list[RunSummary]:
        """Runs of a tenant, newest first (after the ``before`` cursor when given)."""
        wanted = set(status) if status else None
        rows = [
            r for r in self._runs.values()
            if r.header.tenant_id == tenant_id
            and (wanted is None or r.snapshot.status in wanted)
            and (project_id is None or r.header.project_id == project_id)
            and (environment_id is None or r.header.environment_id == environment_id)
            and (plan_id is None or r.header.plan_id == plan_id)
            and label_filter_matches(r.header.labels, labels)
            and (created_after is None or r.header.created_at >= created_after)
            and (created_before is None or r.header.created_at < created_before)
            and (before is None or (r.header.created_at, r.header.run_id) < before)
        ]
        rows.sort(key=lambda r: (r.header.created_at, r.header.run_id), reverse=True)
        return [self._summary(r) for r in rows[: max(0, limit)]]

    # --- the log ------------------------------------------------------------------------
    async def append(self, event: Event) -> AppendResult:
        """Append one event; a repeated (runId, idempotencyKey) inserts nothing."""
        event = prepared_for_storage(event)
        async with self._lock:
            self._refuse_conflicts([event])
            result = self._append_locked(event)
            self._appended.notify_all()
            return result

    async def append_if_last(self, event: Event, expected_last_seq: int) -> AppendResult | None:
        """Append ``event`` only while the run's last runSeq is ``expected_last_seq``."""
        event = prepared_for_storage(event)
        async with self._lock:
            run = self._require_run(event.tenant_id, event.run_id)
            if run.next_seq - 1 != expected_last_seq:
                return None
            self._refuse_conflicts([event])
            result = self._append_locked(event)
            self._appended.notify_all()
            return result

    async def append_batch_if_last(
        self, events: Sequence[Event], expected_last_seq: int
    ) -> list[AppendResult] | None:
        """Append events of one run only while its last runSeq is ``expected_last_seq``."""
        events = [prepared_for_storage(e) for e in events]
        if not events:
            return []
        async with self._lock:
            for event in events:
                self._require_run(event.tenant_id, event.run_id)
            runs = {(e.tenant_id, e.run_id) for e in events}
            if len(runs) != 1:
                raise UsageError("append_batch_if_last takes the events of one run")
            run = self._require_run(events[0].tenant_id, events[0].run_id)
            if run.next_seq - 1 != expected_last_seq:
                return None
            self._refuse_conflicts(events)
            results = [self._append_locked(e) for e in events]
            self._appended.notify_all()
            return results

    async def append_batch(self, events: Sequence[Event]) -> list[AppendResult]:
        """Append many events atomically with the same per-event guarantees."""
        events = [prepared_for_storage(e) for e in events]
        async with self._lock:
            for event in events:
                self._require_run(event.tenant_id, event.run_id)
            self._refuse_conflicts(events)
            results = [self._append_locked(e) for e in events]
            self._appended.notify_all()
            return results

    def _refuse_conflicts(self, events: Sequence[Event]) -> None:
        # Before anything is appended, so a refused batch stores nothing.
        first: dict[tuple[str, str, str], Event] = {}
        for event in events:
            where = (event.tenant_id, event.run_id, event.idempotency_key)
            run = self._require_run(event.tenant_id, event.run_id)
            stored = run.by_key.get(event.idempotency_key) or first.get(where)
            if stored is not None:
                refuse_conflict(event, stored, store="memory")
            else:
                first[where] = event

    def _append_locked(self, event: Event) -> AppendResult:
        run = self._require_run(event.tenant_id, event.run_id)
        found = run.by_key.get(event.idempotency_key)
        if found is not None:
            return _result(found, duplicate=True)
        stored = event.model_copy(update={"run_seq": run.next_seq, "persisted_at": utc_now()})
        run.next_seq += 1
        run.events.append(stored)
        run.by_key[stored.idempotency_key] = stored
        run.projection.fold([stored])
        run.updated_at = stored.persisted_at or utc_now()
        self._all_events.append(stored)
        self._outbox.appended()
        return _result(stored, duplicate=False)

    async def fetch_events(
        self, tenant_id: str, run_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        """Events of a run with runSeq > after_seq, ascending."""
        run = self._owned(tenant_id, run_id)
        if run is None:
            return []
        selected = run.events[bisect_right(run.events, after_seq, key=_run_seq):]
        return selected if limit is None else selected[: max(0, limit)]

    async def get_event_by_key(
        self, tenant_id: str, run_id: str, idempotency_key: str
    ) -> Event | None:
        """The event stored under an idempotency key, or None."""
        run = self._owned(tenant_id, run_id)
        return run.by_key.get(idempotency_key) if run else None

    async def follow(
        self, tenant_id: str, run_id: str | None = None, *, after_seq: int = 0
    ) -> AsyncIterator[Event]:
        """New events of one run (runSeq order) or of every run of the tenant."""
        if run_id is not None:
            cursor = after_seq
            while True:
                async with self._lock:
                    batch = await self._wait_for(partial(self._run_tail, tenant_id, run_id, cursor))
                for event in batch:
                    cursor = event.run_seq or cursor
                    yield event
        else:
            async for item in self.follow_tenant(tenant_id):
                yield item.event

    async def follow_tenant(
        self, tenant_id: str, *, after: TenantCursor | None = None
    ) -> AsyncIterator[TenantEvent]:
        """Every event of the tenant in commit order; the cursor is its place in the log."""
        position = len(self._all_events) if after is None else _parse_cursor(after)
        while True:
            async with self._lock:
                batch = await self._wait_for(partial(self._tenant_tail, tenant_id, position))
                position = max(position, len(self._all_events))
            for item in batch:
                yield item

    def _run_tail(self, tenant_id: str, run_id: str, after_seq: int) -> list[Event]:
        # A run's events are stored in runSeq order, so the tail starts where after_seq ends.
        events = self._run_events(tenant_id, run_id)
        return events[bisect_right(events, after_seq, key=_run_seq):]

    def _tenant_tail(self, tenant_id: str, position: int) -> list[TenantEvent]:
        return [
            TenantEvent(str(index), event)
            for index, event in enumerate(self._all_events[position:], start=position + 1)
            if event.tenant_id == tenant_id
        ]

    async def _wait_for(self, pick: Callable[[], list[_T]]) -> list[_T]:
        while True:
            batch = pick()
            if batch:
                return batch
            await self._appended.wait()

    def _run_events(self, tenant_id: str, run_id: str) -> list[Event]:
        run = self._owned(tenant_id, run_id)
        return run.events if run else []

    # --- outbox (the webhook dispatcher of a dev service) ----------------------------------
    async def claim_outbox(self, limit: int = 100, lease_seconds: float = 30.0
                           ) -> list[OutboxItem]:
        """Lease up to ``limit`` events not acknowledged yet, oldest first."""
        return self._outbox.claim(limit, lease_seconds)

    async def ack_outbox(self, ids: Sequence[int]) -> None:
        """Acknowledge leased outbox events."""
        self._outbox.ack(ids)

    @property
    def outbox_ready(self) -> asyncio.Event:
        """Set when events were appended since the consumer last cleared it."""
        return self._outbox.ready

    # --- snapshots ----------------------------------------------------------------------
    async def get_snapshot(self, tenant_id: str, run_id: str) -> RunSnapshot | None:
        """The latest projection (always current: it is updated inside append)."""
        run = self._owned(tenant_id, run_id)
        return run.snapshot if run else None

    async def project(self, tenant_id: str, run_id: str) -> RunSnapshot:
        """Recompute a run's snapshot from its log."""
        run = self._require_run(tenant_id, run_id)
        return project(run.header, list(run.events))

    # --- plan registry ------------------------------------------------------------------
    async def put_plan(self, data: bytes) -> str:
        """Store plan bytes once; returns ``plan://sha256/<hex>``."""
        digest = hashlib.sha256(data).hexdigest()
        self._plans.setdefault(digest, bytes(data))
        return PLAN_URI_PREFIX + digest

    async def get_plan(self, sha256: str) -> bytes | None:
        """The bytes stored under a digest, or None."""
        return self._plans.get(sha256)

    # --- helpers ------------------------------------------------------------------------
    def _owned(self, tenant_id: str, run_id: str) -> _Run | None:
        return self._runs.get((tenant_id, run_id))

    def _require_run(self, tenant_id: str, run_id: str) -> _Run:
        run = self._owned(tenant_id, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})
        return run

    @staticmethod
    def _summary(run: _Run) -> RunSummary:
        h, s = run.header, run.snapshot
        return RunSummary(
            run_id=h.run_id, tenant_id=h.tenant_id, project_id=h.project_id,
            environment_id=h.environment_id, plan_id=h.plan_id, plan_version=h.plan_version,
            engine=h.engine, status=s.status, substatus=s.substatus,
            last_event_seq=s.last_event_seq, labels=dict(h.labels), created_at=h.created_at,
            updated_at=run.updated_at,
        )


def _run_seq(event: Event) -> int:
    return event.run_seq or 0


def _parse_cursor(cursor: TenantCursor) -> int:
    if cursor == TENANT_LOG_START:
        return 0
    if not isinstance(cursor, str) or not cursor.isascii() or not cursor.isdigit():
        raise UsageError(f"not a tenant cursor of the memory store: {cursor!r}")
    return int(cursor)


def _result(event: Event, *, duplicate: bool) -> AppendResult:
    if event.run_seq is None or event.persisted_at is None:
        raise AssertionError("stored events always have runSeq and persistedAt")
    return AppendResult(run_seq=event.run_seq, persisted_at=event.persisted_at,
                        event_id=event.event_id, duplicate=duplicate)
