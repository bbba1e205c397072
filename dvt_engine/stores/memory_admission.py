"""In-memory admission, the twin of dvt_statestore_pg.admission for the memory store.

One asyncio lock stands in for PostgreSQL's per-tenant advisory lock; active runs are read from
the run store's latest-status index, as in PostgreSQL, so a slot frees with the terminal event.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from dvt_engine.admission import (
    ACTIVE_STATUSES,
    CLAIM_LEASE_S,
    RESERVATION_LEASE_S,
    Admission,
    AdmissionStore,
    Bucket,
    LimitSettings,
    LimitsPatch,
    Overflow,
    QueuedRun,
    StartRequest,
    TenantLimits,
    full_bucket,
    plan_problem,
    rate_limited,
)
from dvt_engine.errors import DvtError
from dvt_engine.eventlog import utc_now
from dvt_engine.ports import RunStateStore

_WAITING = ("QUEUED", "STARTING")


@dataclass
class _Entry:
    run: QueuedRun
    request_key: str
    claimed_until: datetime | None = None


class MemoryAdmissionStore(AdmissionStore):
    """Admission in process memory, over any run store (lost when the process ends)."""

    def __init__(self, store: RunStateStore, settings: LimitSettings | None = None) -> None:
        super().__init__(settings)
        self.store = store
        self._overrides: dict[str, dict[str, Any]] = {}
        self._reserved: dict[tuple[str, str], datetime] = {}
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._queue: dict[tuple[str, str], _Entry] = {}
        self._seq = itertools.count(1)
        self._lock = asyncio.Lock()

    async def overrides(self, tenant_id: str) -> dict[str, Any]:
        """The tenant's stored overrides."""
        return dict(self._overrides.get(tenant_id, {}))

    async def _set_limits(self, tenant_id: str, patch: LimitsPatch) -> TenantLimits:
        """Apply a patch; the effective limits after it."""
        async with self._lock:
            self._overrides[tenant_id] = patch.apply(self._overrides.get(tenant_id, {}))
            for key in [k for k in self._buckets if k[0] == tenant_id]:
                del self._buckets[key]  # new rates apply from a full bucket at once
        return await self.limits(tenant_id)

    async def _active(self, tenant_id: str, limit: int) -> int:
        """Slots held, counted up to ``limit`` (enough to compare with the limit)."""
        now = utc_now()
        runs = await self.store.list_runs(tenant_id, status=ACTIVE_STATUSES, limit=limit)
        held = 0
        for (tenant, run_id), at in list(self._reserved.items()):
            if tenant != tenant_id:
                continue
            if now - at > timedelta(seconds=RESERVATION_LEASE_S) or \
                    await self.store.get_run(tenant, run_id) is not None:
                del self._reserved[(tenant, run_id)]
            else:
                held += 1
        return len(runs) + held

    def _waiting(self, tenant_id: str) -> list[_Entry]:
        return sorted((e for (t, _), e in self._queue.items()
                       if t == tenant_id and e.run.state in _WAITING), key=lambda e: e.run.seq)

    def _take(self, tenant_id: str, kind: str, per_minute: int) -> float:
        now = utc_now()
        bucket = self._buckets.get((tenant_id, kind)) or full_bucket(per_minute, now)
        after, wait = bucket.take(per_minute, now)
        self._buckets[(tenant_id, kind)] = after
        return wait

    async def _admit(self, request: StartRequest) -> Admission:
        """Check the limits and hold a slot, or queue the run, under the lock."""
        tenant = request.tenant_id
        limits = await self.limits(tenant)
        plan_problem(limits, request.plan_steps, request.plan_bytes)
        async with self._lock:
            for entry in self._queue.values():
                if entry.request_key == request.request_key and entry.run.tenant_id == tenant:
                    return Admission(queued=True, run_id=entry.run.run_id)
            if await self.store.get_run(tenant, request.run_id) is not None:
                return Admission(queued=False, run_id=request.run_id)
            waiting = self._waiting(tenant)
            room = not waiting and \
                await self._active(tenant, limits.max_active_runs + 1) < limits.max_active_runs
            wait = self._take(tenant, "start", limits.run_starts_per_minute) if room else 0.0
            if room and wait == 0.0:
                self._reserved[(tenant, request.run_id)] = utc_now()
                return Admission(queued=False, run_id=request.run_id)
            if limits.overflow is Overflow.QUEUE:
                if len(waiting) >= limits.max_queued_runs:
                    raise rate_limited("queuedRuns", tenant, 5.0, limits.max_queued_runs)
                run = QueuedRun(next(self._seq), request.plan_ref, request.context, "QUEUED",
                                utc_now())
                self._queue[(tenant, request.run_id)] = _Entry(run, request.request_key)
                return Admission(queued=True, position=len(waiting) + 1, run_id=request.run_id)
            if not room:
                raise rate_limited("activeRuns", tenant, 1.0, limits.max_active_runs)
            raise rate_limited("runStartsPerMinute", tenant, wait, limits.run_starts_per_minute)

    async def release(self, tenant_id: str, run_id: str) -> None:
        """Drop a reservation."""
        self._reserved.pop((tenant_id, run_id), None)

    async def take_signal(self, tenant_id: str) -> None:
        """Count one signal; RATE_LIMITED when over the limit."""
        limits = await self.limits(tenant_id)
        async with self._lock:
            wait = self._take(tenant_id, "signal", limits.signals_per_minute)
        if wait:
            raise rate_limited("signalsPerMinute", tenant_id, wait, limits.signals_per_minute)

    async def claim(self, tenant_id: str) -> QueuedRun | None:
        """Take the queue's head when a slot and a start are free."""
        limits = await self.limits(tenant_id)
        now = utc_now()
        async with self._lock:
            head = next((e for e in self._waiting(tenant_id)
                         if e.run.state == "QUEUED" or
                         (e.claimed_until is not None and e.claimed_until < now)), None)
            if head is None:
                return None
            if await self.store.get_run(tenant_id, head.run.run_id) is None:
                if await self._active(tenant_id, limits.max_active_runs + 1) \
                        >= limits.max_active_runs:
                    return None
                if self._take(tenant_id, "start", limits.run_starts_per_minute):
                    return None
                self._reserved[(tenant_id, head.run.run_id)] = now
            head.run = replace(head.run, state="STARTING")
            head.claimed_until = now + timedelta(seconds=CLAIM_LEASE_S)
            return head.run

    async def finish_claim(self, run: QueuedRun, error: DvtError | None = None) -> None:
        """Remove the started run's row, or keep it as FAILED with the error."""
        async with self._lock:
            key = (run.tenant_id, run.run_id)
            if error is None:
                self._queue.pop(key, None)
            elif key in self._queue:
                entry = self._queue[key]
                entry.run = replace(entry.run, state="FAILED", error=error.to_dict())

    async def cancel_queued(self, tenant_id: str, run_id: str) -> bool:
        """Cancel a waiting run."""
        async with self._lock:
            entry = self._queue.get((tenant_id, run_id))
            if entry is None or entry.run.state != "QUEUED":
                return False
            entry.run = replace(entry.run, state="CANCELLED")
            return True

    async def queued_run(self, tenant_id: str, run_id: str) -> QueuedRun | None:
        """The queue row of a run, or None."""
        entry = self._queue.get((tenant_id, run_id))
        return entry.run if entry is not None else None

    async def queued_tenants(self) -> list[str]:
        """Tenants with runs waiting."""
        return sorted({t for (t, _), e in self._queue.items() if e.run.state in _WAITING})

    async def queue_depths(self) -> dict[str, int]:
        """Runs waiting per tenant."""
        depths: dict[str, int] = {}
        for (tenant, _), entry in self._queue.items():
            if entry.run.state in _WAITING:
                depths[tenant] = depths.get(tenant, 0) + 1
        return depths
