"""Admission on PostgreSQL (migration 0009), next to the run store.

Each decision is one transaction holding a per-tenant advisory lock: the active runs are
counted from ``dvt_runs`` (the latest-status index the append function updates in the terminal
event's own transaction) plus unexpired reservations of runs not registered yet, then a slot is
reserved or the run queued. N concurrent starts with room for K therefore create exactly K
runs, whatever process or engine starts them. Like the access store it opens its own small pool
on the store's URL and schema.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from dvt_engine.admission import (
    ACTIVE_STATUSES,
    CLAIM_LEASE_S,
    RESERVATION_LEASE_S,
    Admission,
    AdmissionStore,
    Bucket,
    BudgetCrossing,
    LimitSettings,
    LimitsPatch,
    Overflow,
    QueuedRun,
    StartRequest,
    TenantLimits,
    effective_limits,
    full_bucket,
    plan_problem,
    rate_limited,
)
from dvt_engine.errors import DvtError
from dvt_statestore_pg.side_store import SideStore

_T = TypeVar("_T")
Conn = psycopg.AsyncConnection[Any]
# First half of the per-tenant advisory lock; the second is hashtext(tenant_id).
_LOCK_CLASS = 0x6476_7409
_ACTIVE = [str(s) for s in ACTIVE_STATUSES]
_QUEUE_COLUMNS = "seq, plan_ref, context, state, enqueued_at, error"


# Everything a start's decision reads, in one statement (after the tenant's lock).
_ADMIT_READ = (
    "SELECT (SELECT overrides FROM {s}.dvt_tenant_limits WHERE tenant_id = %(t)s),"
    " (SELECT run_id FROM {s}.dvt_admission_queue WHERE tenant_id = %(t)s"
    "   AND (run_request_key = %(k)s OR run_id = %(r)s) LIMIT 1),"
    " (SELECT run_id FROM {s}.dvt_runs WHERE tenant_id = %(t)s"
    "   AND (run_request_key = %(k)s OR run_id = %(r)s) LIMIT 1),"
    " (SELECT count(*) FROM {s}.dvt_admission_queue WHERE tenant_id = %(t)s"
    "   AND state IN ('QUEUED', 'STARTING')),"
    " (SELECT count(*) FROM {s}.dvt_runs WHERE tenant_id = %(t)s AND status = ANY(%(active)s))"
    " + (SELECT count(*) FROM {s}.dvt_admission_slots a WHERE a.tenant_id = %(t)s"
    "   AND a.reserved_at > clock_timestamp() - make_interval(secs => %(lease)s)"
    "   AND NOT EXISTS (SELECT 1 FROM {s}.dvt_runs r"
    "                   WHERE r.tenant_id = a.tenant_id AND r.run_id = a.run_id)),"
    " b.tokens, b.updated_at, clock_timestamp()"
    " FROM (SELECT 1) one LEFT JOIN {s}.dvt_admission_buckets b"
    "   ON b.tenant_id = %(t)s AND b.kind = 'start'")
# A start admitted: its token taken, its slot reserved, lapsed or registered reservations
# dropped (never the one being written: one statement may not touch a row twice).
_ADMIT_WRITE = (
    "WITH bucket AS (INSERT INTO {s}.dvt_admission_buckets (tenant_id, kind, tokens, updated_at)"
    "   VALUES (%(t)s, %(kind)s, %(tokens)s, %(at)s) ON CONFLICT (tenant_id, kind) DO UPDATE"
    "   SET tokens = excluded.tokens, updated_at = excluded.updated_at),"
    " stale AS (DELETE FROM {s}.dvt_admission_slots a WHERE a.tenant_id = %(t)s"
    "   AND a.run_id <> %(r)s"
    "   AND (a.reserved_at <= clock_timestamp() - make_interval(secs => %(lease)s) OR EXISTS"
    "   (SELECT 1 FROM {s}.dvt_runs r WHERE r.tenant_id = a.tenant_id AND r.run_id = a.run_id)))"
    " INSERT INTO {s}.dvt_admission_slots (tenant_id, run_id) VALUES (%(t)s, %(r)s)"
    " ON CONFLICT (tenant_id, run_id) DO UPDATE SET reserved_at = clock_timestamp()")


# The head of a tenant's queue: waiting, or claimed by a dispatcher whose claim lapsed (an
# index scan of dvt_admission_queue_waiting, (tenant_id, seq), stopping at the first row).
# Whether the head is registered is asked of that one row after the LIMIT (an index probe of
# dvt_runs), never as a hashed subplan over every run of the store.
_CLAIM_HEAD = (
    f"SELECT {_QUEUE_COLUMNS}, EXISTS (SELECT 1 FROM {{s}}.dvt_runs r"
    "   WHERE r.tenant_id = h.tenant_id AND r.run_id = h.run_id)"
    f" FROM (SELECT {_QUEUE_COLUMNS}, tenant_id, run_id FROM {{s}}.dvt_admission_queue q"
    "   WHERE q.tenant_id = %s AND (q.state = 'QUEUED'"
    "   OR (q.state = 'STARTING' AND q.claimed_until < clock_timestamp()))"
    "   ORDER BY q.seq LIMIT 1) h")
# Distinct tenants of the waiting index, in name order (a recursive skip scan: PostgreSQL
# reads every waiting row for a DISTINCT or GROUP BY).
_QUEUED_TENANTS = (
    "WITH RECURSIVE t(tenant_id) AS ("
    " (SELECT tenant_id FROM {s}.dvt_admission_queue WHERE state IN ('QUEUED', 'STARTING')"
    "   ORDER BY tenant_id LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT q.tenant_id FROM {s}.dvt_admission_queue q"
    "   WHERE q.state IN ('QUEUED', 'STARTING') AND q.tenant_id > t.tenant_id"
    "   ORDER BY q.tenant_id LIMIT 1) FROM t WHERE t.tenant_id IS NOT NULL)"
    " SELECT tenant_id FROM t WHERE tenant_id IS NOT NULL")


def _queued(row: tuple[Any, ...]) -> QueuedRun:
    return QueuedRun.of(row[0], row[1], row[2], row[3], row[4], row[5])


class PostgresAdmissionStore(SideStore, AdmissionStore):
    """The admission port on PostgreSQL; ``await PostgresAdmissionStore.open(url, settings)``."""

    purpose = "admission"

    def __init__(self, url: str, settings: LimitSettings | None = None, *,
                 pool_max: int = 4) -> None:
        SideStore.__init__(self, url, pool_max=pool_max)
        AdmissionStore.__init__(self, settings)

    @classmethod
    async def open(cls, url: str, settings: LimitSettings | None = None, *,
                   pool_max: int = 4) -> PostgresAdmissionStore:
        """Connect and bring the schema up to date."""
        store = cls(url, settings, pool_max=pool_max)
        await store._ensure_open()
        return store

    async def _locked(self, tenant_id: str, work: Callable[[Conn], Awaitable[_T]], *,
                      durable: bool = True) -> _T:
        """``work`` in one transaction holding the tenant's admission lock.

        ``durable=False`` commits without waiting for the WAL flush: for a reservation that
        is fine to lose in a server crash (it lapses anyway, and the run's registration, a
        later durable commit, flushes it first). Work that must survive sets it back on.
        """
        async def locked(conn: Conn) -> _T:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s)),"
                                   " set_config('synchronous_commit', %s, true)",
                                   (_LOCK_CLASS, tenant_id, "on" if durable else "off"))
                return await work(conn)

        return await self._run(locked)

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._schema)

    # --- limits ----------------------------------------------------------------------------
    async def overrides(self, tenant_id: str) -> dict[str, Any]:
        """The tenant's stored overrides (read on every decision: changes apply at once)."""
        query = self._q("SELECT overrides FROM {s}.dvt_tenant_limits WHERE tenant_id = %s")

        async def work(conn: Conn) -> dict[str, Any]:
            row = await (await conn.execute(query, (tenant_id,))).fetchone()
            return dict(row[0]) if row else {}

        return await self._run(work)

    async def _limits_in(self, conn: Conn, tenant_id: str) -> TenantLimits:
        query = self._q("SELECT overrides FROM {s}.dvt_tenant_limits WHERE tenant_id = %s")
        row = await (await conn.execute(query, (tenant_id,))).fetchone()
        return effective_limits(self.settings.defaults(), dict(row[0]) if row else {})

    async def _set_limits(self, tenant_id: str, patch: LimitsPatch) -> TenantLimits:
        """Apply a patch to the stored overrides under the tenant's lock."""
        select = self._q("SELECT overrides FROM {s}.dvt_tenant_limits WHERE tenant_id = %s")
        upsert = self._q("INSERT INTO {s}.dvt_tenant_limits (tenant_id, overrides)"
                         " VALUES (%s, %s) ON CONFLICT (tenant_id) DO UPDATE"
                         " SET overrides = excluded.overrides, updated_at = clock_timestamp()")
        buckets = self._q("DELETE FROM {s}.dvt_admission_buckets WHERE tenant_id = %s")

        async def work(conn: Conn) -> dict[str, Any]:
            row = await (await conn.execute(select, (tenant_id,))).fetchone()
            merged = patch.apply(dict(row[0]) if row else {})
            await conn.execute(upsert, (tenant_id, Jsonb(merged)))
            # New rates apply from a full bucket at once, not after the old one refills.
            await conn.execute(buckets, (tenant_id,))
            return merged

        merged = await self._locked(tenant_id, work)
        return effective_limits(self.settings.defaults(), merged)

    async def record_crossing(self, crossing: BudgetCrossing) -> bool:
        """Insert the crossing once (the row's key is tenant, month and threshold)."""
        insert = self._q("INSERT INTO {s}.dvt_budget_crossings (tenant_id, month, threshold,"
                         " used_units, budget_units) VALUES (%s, %s, %s, %s, %s)"
                         " ON CONFLICT DO NOTHING RETURNING threshold")

        async def work(conn: Conn) -> bool:
            row = await (await conn.execute(insert, (
                crossing.tenant_id, crossing.month, crossing.threshold, crossing.used_units,
                crossing.budget_units))).fetchone()
            return row is not None

        return await self._run(work)

    async def crossings(self, tenant_id: str) -> list[BudgetCrossing]:
        """The tenant's recorded crossings, oldest month and lowest threshold first."""
        query = self._q("SELECT month, threshold, used_units, budget_units FROM"
                        " {s}.dvt_budget_crossings WHERE tenant_id = %s ORDER BY month, threshold")

        async def work(conn: Conn) -> list[BudgetCrossing]:
            rows = await (await conn.execute(query, (tenant_id,))).fetchall()
            return [BudgetCrossing(tenant_id, r[0], r[1], r[2], r[3]) for r in rows]

        return await self._run(work)

    # --- the pieces of a decision, inside the tenant's transaction --------------------------
    async def _active(self, conn: Conn, tenant_id: str) -> int:
        query = self._q(
            "SELECT (SELECT count(*) FROM {s}.dvt_runs WHERE tenant_id = %(t)s"
            "         AND status = ANY(%(active)s))"
            "     + (SELECT count(*) FROM {s}.dvt_admission_slots a WHERE a.tenant_id = %(t)s"
            "         AND a.reserved_at > clock_timestamp() - make_interval(secs => %(lease)s)"
            "         AND NOT EXISTS (SELECT 1 FROM {s}.dvt_runs r"
            "                         WHERE r.tenant_id = a.tenant_id AND r.run_id = a.run_id))")
        row = await (await conn.execute(query, {"t": tenant_id, "active": _ACTIVE,
                                                "lease": RESERVATION_LEASE_S})).fetchone()
        assert row is not None
        return int(row[0])

    async def _reserve(self, conn: Conn, tenant_id: str, run_id: str) -> None:
        # Reservations of registered or lapsed runs are dropped here, so the table stays small.
        await conn.execute(self._q(
            "DELETE FROM {s}.dvt_admission_slots a WHERE a.tenant_id = %(t)s AND"
            " (a.reserved_at <= clock_timestamp() - make_interval(secs => %(lease)s) OR EXISTS"
            " (SELECT 1 FROM {s}.dvt_runs r WHERE r.tenant_id = a.tenant_id"
            "  AND r.run_id = a.run_id))"), {"t": tenant_id, "lease": RESERVATION_LEASE_S})
        await conn.execute(self._q(
            "INSERT INTO {s}.dvt_admission_slots (tenant_id, run_id) VALUES (%s, %s)"
            " ON CONFLICT (tenant_id, run_id) DO UPDATE SET reserved_at = clock_timestamp()"),
            (tenant_id, run_id))

    async def _take(self, conn: Conn, tenant_id: str, kind: str, per_minute: int) -> float:
        """Take a token of the tenant's bucket; 0, or the seconds until one is due."""
        row = await (await conn.execute(self._q(
            "SELECT tokens, updated_at, clock_timestamp() FROM {s}.dvt_admission_buckets"
            " RIGHT JOIN (SELECT 1) one ON tenant_id = %s AND kind = %s"),
            (tenant_id, kind))).fetchone()
        assert row is not None
        now: datetime = row[2]
        bucket = Bucket(row[0], row[1]) if row[0] is not None else full_bucket(per_minute, now)
        after, wait = bucket.take(per_minute, now)
        await conn.execute(self._q(
            "INSERT INTO {s}.dvt_admission_buckets (tenant_id, kind, tokens, updated_at)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant_id, kind) DO UPDATE"
            " SET tokens = excluded.tokens, updated_at = excluded.updated_at"),
            (tenant_id, kind, after.tokens, after.at))
        return wait

    # --- decisions -------------------------------------------------------------------------
    async def _admit(self, request: StartRequest) -> Admission:
        """Check the limits and hold a slot, or queue the run, in one locked transaction.

        Four round trips: the lock, one read of everything the decision needs, one write of
        the bucket and the reservation (or the queue row), the commit.
        """
        tenant = request.tenant_id
        keys = {"t": tenant, "k": request.request_key, "r": request.run_id,
                "active": _ACTIVE, "lease": RESERVATION_LEASE_S}
        enqueue = self._q(
            "INSERT INTO {s}.dvt_admission_queue (tenant_id, run_id, run_request_key, plan_ref,"
            " context) VALUES (%s, %s, %s, %s, %s)")

        async def work(conn: Conn) -> Admission:
            row = await (await conn.execute(self._q(_ADMIT_READ), keys)).fetchone()
            assert row is not None
            overrides, in_queue, registered, queued, active, tokens, at, now = row
            limits = effective_limits(self.settings.defaults(), dict(overrides or {}))
            plan_problem(limits, request.plan_steps, request.plan_bytes)
            if in_queue is not None or registered is not None:  # a repeat of a start
                return Admission(queued=in_queue is not None, run_id=in_queue or registered)
            room = queued == 0 and active < limits.max_active_runs
            wait = 0.0
            if room:
                per_minute = limits.run_starts_per_minute
                bucket = Bucket(tokens, at) if tokens is not None else full_bucket(per_minute,
                                                                                   now)
                after, wait = bucket.take(per_minute, now)
                if wait == 0.0:
                    await conn.execute(self._q(_ADMIT_WRITE), {
                        **keys, "kind": "start", "tokens": after.tokens, "at": after.at})
                    return Admission(queued=False, run_id=request.run_id)
            if limits.overflow is Overflow.QUEUE:
                if queued >= limits.max_queued_runs:
                    raise rate_limited("queuedRuns", tenant, 5.0, limits.max_queued_runs)
                plan_ref, context = request.payload()
                # A queued run was promised (202): its row must survive a server crash.
                await conn.execute("SET LOCAL synchronous_commit = on")
                await conn.execute(enqueue, (tenant, request.run_id, request.request_key,
                                             plan_ref, context))
                return Admission(queued=True, position=queued + 1, run_id=request.run_id)
            if not room:
                raise rate_limited("activeRuns", tenant, 1.0, limits.max_active_runs)
            raise rate_limited("runStartsPerMinute", tenant, wait, limits.run_starts_per_minute)

        return await self._locked(tenant, work, durable=False)

    async def release(self, tenant_id: str, run_id: str) -> None:
        """Drop a reservation whose start failed."""
        query = self._q("DELETE FROM {s}.dvt_admission_slots WHERE tenant_id = %s"
                        " AND run_id = %s")

        async def work(conn: Conn) -> None:
            await conn.execute(query, (tenant_id, run_id))

        await self._run(work)

    async def take_signal(self, tenant_id: str) -> None:
        """Count one signal; RATE_LIMITED when over signalsPerMinute."""
        async def work(conn: Conn) -> tuple[float, int]:
            limits = await self._limits_in(conn, tenant_id)
            wait = await self._take(conn, tenant_id, "signal", limits.signals_per_minute)
            return wait, limits.signals_per_minute

        wait, limit = await self._locked(tenant_id, work)
        if wait:
            raise rate_limited("signalsPerMinute", tenant_id, wait, limit)

    async def claim(self, tenant_id: str) -> QueuedRun | None:
        """Take the head of the tenant's queue when a slot and a start are free."""
        head = self._q(_CLAIM_HEAD)
        mark = self._q("UPDATE {s}.dvt_admission_queue SET state = 'STARTING',"
                       " claimed_until = clock_timestamp() + make_interval(secs => %s)"
                       " WHERE seq = %s")

        async def work(conn: Conn) -> QueuedRun | None:
            row = await (await conn.execute(head, (tenant_id,))).fetchone()
            if row is None:
                return None
            run = _queued(row[:6])
            if not row[6]:  # not registered by an earlier claim: it needs a slot and a start
                limits = await self._limits_in(conn, tenant_id)
                if await self._active(conn, tenant_id) >= limits.max_active_runs:
                    return None
                if await self._take(conn, tenant_id, "start", limits.run_starts_per_minute):
                    return None
                await self._reserve(conn, tenant_id, run.run_id)
            await conn.execute(mark, (CLAIM_LEASE_S, run.seq))
            return run

        return await self._locked(tenant_id, work)

    async def finish_claim(self, run: QueuedRun, error: DvtError | None = None) -> None:
        """Delete the started run's row, or keep it as FAILED with the error."""
        if error is None:
            query = self._q("DELETE FROM {s}.dvt_admission_queue WHERE seq = %s")
            args: tuple[Any, ...] = (run.seq,)
        else:
            query = self._q("UPDATE {s}.dvt_admission_queue SET state = 'FAILED', error = %s"
                            " WHERE seq = %s")
            args = (json.dumps(error.to_dict()), run.seq)

        async def work(conn: Conn) -> None:
            await conn.execute(query, args)

        await self._run(work)

    async def cancel_queued(self, tenant_id: str, run_id: str) -> bool:
        """Cancel a run still waiting (not yet claimed) in its queue."""
        query = self._q("UPDATE {s}.dvt_admission_queue SET state = 'CANCELLED'"
                        " WHERE tenant_id = %s AND run_id = %s AND state = 'QUEUED'"
                        " RETURNING 1")

        async def work(conn: Conn) -> bool:
            return await (await conn.execute(query, (tenant_id, run_id))).fetchone() is not None

        return await self._locked(tenant_id, work)

    async def queued_run(self, tenant_id: str, run_id: str) -> QueuedRun | None:
        """The queue row of a run, or None."""
        query = self._q(f"SELECT {_QUEUE_COLUMNS} FROM {{s}}.dvt_admission_queue"
                        " WHERE tenant_id = %s AND run_id = %s")

        async def work(conn: Conn) -> QueuedRun | None:
            row = await (await conn.execute(query, (tenant_id, run_id))).fetchone()
            return _queued(row) if row else None

        return await self._run(work)

    async def queued_tenants(self) -> list[str]:
        """Tenants with runs waiting, in name order: one index probe per tenant.

        A skip scan of the waiting index (each step seeks the next tenant name), so a round
        costs the number of tenants, not the number of waiting runs: a count over a 100,000
        run backlog took most of each dispatch round (docs/benchmarks.md#admission).
        """
        async def work(conn: Conn) -> list[str]:
            rows = await (await conn.execute(self._q(_QUEUED_TENANTS))).fetchall()
            return [r[0] for r in rows]

        return await self._run(work)

    async def queue_depths(self) -> dict[str, int]:
        """Runs waiting per tenant."""
        query = self._q("SELECT tenant_id, count(*) FROM {s}.dvt_admission_queue"
                        " WHERE state IN ('QUEUED', 'STARTING') GROUP BY tenant_id")

        async def work(conn: Conn) -> dict[str, int]:
            return {r[0]: int(r[1]) for r in await (await conn.execute(query)).fetchall()}

        return await self._run(work)
