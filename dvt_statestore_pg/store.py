"""PostgresRunStateStore: the state store on PostgreSQL (contract §5).

The class is assembled from one part per job: appending (appends.py, conditional.py), following
(follow.py) and the outbox (outbox.py) on a shared core (core.py), with reads across the hot log
and the cold archive (tiers.py); runs, reads, snapshots and plans are here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from dvt_engine.errors import RunNotFound, UsageError
from dvt_engine.identifiers import validate_identifier
from dvt_engine.labels import label_problems
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunHeader, RunStatus, RunSubstatus, RunSummary
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore
from dvt_engine.projector import initial_snapshot, project
from dvt_statestore_pg.conditional import ConditionalAppender
from dvt_statestore_pg.core import Conn, event_from_row, utc, valid_ids
from dvt_statestore_pg.outbox import Outbox, OutboxItem
from dvt_statestore_pg.tiers import ColdTier

PLAN_URI_PREFIX = "plan://sha256/"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Headers kept per store: a thousand runs, and none over 8 KiB of text (a plan of about 100
# steps), so the memory it takes stays small whatever the plans (a big header's model is
# several times its text).
_HEADERS_MAX = 1000
_HEADER_TEXT_MAX = 8192
_STATUS = {s.value: s for s in RunStatus}
_SUBSTATUS = {s.value: s for s in RunSubstatus}

__all__ = ["OutboxItem", "PostgresRunStateStore", "open_store"]


class PostgresRunStateStore(ColdTier, ConditionalAppender, Outbox, RunStateStore):
    """The state store on PostgreSQL; ``open_store("postgresql://...?schema=...")`` opens one.

    A run is identified by (tenantId, runId). Appends to one run are serialised by the run's
    writer lock inside one server-side function call (see Appender); every event also gets a
    place in the store-wide commit order that tenant streams follow (see Follower).
    """

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        # Headers read back, with the stored text each was parsed from: the same text is the
        # same header, so a run read again is not parsed again (a run's header never changes;
        # anything that rewrites it rewrites the text too).
        self._headers: dict[tuple[str, str], tuple[str, RunHeader]] = {}

    def _header_from(self, tenant_id: str, run_id: str, text: str) -> RunHeader:
        known = self._headers.get((tenant_id, run_id))
        if known is not None and known[0] == text:
            return known[1]
        header = RunHeader.model_validate_json(text)
        if len(text) <= _HEADER_TEXT_MAX:
            if len(self._headers) >= _HEADERS_MAX:
                self._headers.clear()
            self._headers[(tenant_id, run_id)] = (text, header)
        return header

    @classmethod
    async def open(cls, url: str, **options: Any) -> PostgresRunStateStore:
        """Construct, connect and (unless ``migrate=false``) bring the schema up to date."""
        store = cls(url, **options)
        await store._ensure_open()
        return store

    # --- runs ----------------------------------------------------------------------------
    async def register_run(self, header: RunHeader) -> tuple[RunHeader, bool]:
        """Record a new run; idempotent on (tenantId, runRequestKey)."""
        for name in ("tenant_id", "project_id", "environment_id", "run_id", "plan_id"):
            validate_identifier(name, getattr(header, name))
        snapshot = initial_snapshot(header)

        async def work(conn: Conn) -> tuple[RunHeader, bool]:
            cur = await conn.execute(
                self._q.register,
                (
                    header.run_id,
                    header.tenant_id,
                    header.project_id,
                    header.environment_id,
                    header.plan_id,
                    header.plan_version,
                    header.engine,
                    header.run_request_key,
                    header.model_dump_json(),
                    snapshot.status.value,
                    None,
                    snapshot.model_dump_json(),
                    header.created_at,
                    json.dumps(header.labels),
                ),
            )
            if await cur.fetchone() is not None:
                return header, True
            cur = await conn.execute(
                self._q.header_by_request, (header.tenant_id, header.run_request_key)
            )
            row = await cur.fetchone()
            if row is not None:
                return RunHeader.model_validate_json(row[0]), False
            raise UsageError(
                f"runId {header.run_id!r} is already used by another run request",
                details={"runId": header.run_id},
            )

        return await self._run(work)

    async def get_run(self, tenant_id: str, run_id: str) -> RunHeader | None:
        """The header of a run of this tenant, or None."""
        if not valid_ids(tenant_id, run_id):
            return None

        async def work(conn: Conn) -> RunHeader | None:
            cur = await conn.execute(self._q.header, (run_id, tenant_id))
            row = await cur.fetchone()
            return self._header_from(tenant_id, run_id, row[0]) if row else None

        return await self._run(work)

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
        """Runs of a tenant from the latest-status index, newest first (keyset ``before``)."""
        if limit <= 0 or not valid_ids(tenant_id):
            return []
        for value in (project_id, environment_id, plan_id):
            if value is not None and not valid_ids(value):
                return []
        # A pair no run can hold (e.g. a value with U+0000, which jsonb refuses) matches none.
        if labels and label_problems(dict(labels)):
            return []
        statuses = sorted({RunStatus(s).value for s in status}) if status else []
        query = self._q.list_runs(
            status=bool(statuses),
            one_status=len(statuses) == 1,
            statuses=len(statuses),
            project=project_id is not None,
            environment=environment_id is not None,
            plan=plan_id is not None,
            labels=bool(labels),
            created_after=created_after is not None,
            created_before=created_before is not None,
            before=before is not None,
        )
        params = {
            "tenant": tenant_id,
            "status": statuses[0] if len(statuses) == 1 else statuses or None,
            "project": project_id,
            "environment": environment_id,
            "plan": plan_id,
            "labels": json.dumps(dict(labels)) if labels else None,
            "created_after": created_after,
            "created_before": created_before,
            "limit": limit,
            "before_at": before[0] if before else None,
            "before_id": before[1] if before else None,
        }

        async def work(conn: Conn) -> list[RunSummary]:
            cur = await conn.execute(query, params)
            # Rows the store wrote from validated runs: built without validating them again
            # (which cost more than the statement; the column types are the fields' types).
            return [
                RunSummary.from_trusted({
                    "run_id": r[0],
                    "tenant_id": tenant_id,
                    "project_id": r[1],
                    "environment_id": r[2],
                    "plan_id": r[3],
                    "plan_version": r[4],
                    "engine": r[5],
                    "status": _STATUS[r[6]],
                    "substatus": None if r[7] is None else _SUBSTATUS[r[7]],
                    "last_event_seq": r[8],
                    "labels": {} if r[11] == "{}" else json.loads(r[11]),
                    "created_at": utc(r[9]),
                    "updated_at": utc(r[10]),
                })
                for r in await cur.fetchall()
            ]

        return await self._run(work)

    async def get_event_by_key(
        self, tenant_id: str, run_id: str, idempotency_key: str
    ) -> Event | None:
        """The event stored under an idempotency key, or None."""
        if not valid_ids(tenant_id, run_id) or not _SHA256.match(idempotency_key):
            return None

        async def work(conn: Conn) -> Event | None:
            cur = await conn.execute(self._q.by_key, (run_id, tenant_id, idempotency_key))
            row = await cur.fetchone()
            return event_from_row(*row) if row else None

        return await self._run(work)

    # --- snapshots -----------------------------------------------------------------------
    async def get_snapshot(self, tenant_id: str, run_id: str) -> RunSnapshot | None:
        """The stored projection brought up to the end of the log (one round trip)."""
        if not valid_ids(tenant_id, run_id):
            return None

        async def work(conn: Conn) -> RunSnapshot | None:
            state = await self._load_state(conn, (tenant_id, run_id))
            return state.snapshot if state else None

        return await self._run(work)

    async def project(self, tenant_id: str, run_id: str) -> RunSnapshot:
        """Recompute a run's snapshot from its whole log."""
        if not valid_ids(tenant_id, run_id):
            raise RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})

        async def work(conn: Conn) -> tuple[RunHeader | None, list[Event]]:
            cur = await conn.execute(self._q.header, (run_id, tenant_id))
            row = await cur.fetchone()
            if row is None:
                return None, []
            cur = await conn.execute(self._q.all_events, (run_id, tenant_id))
            return (
                RunHeader.model_validate_json(row[0]),
                [event_from_row(*r) for r in await cur.fetchall()],
            )

        header, events = await self._run(work)
        if header is None:
            raise RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})
        return project(header, await self.whole_log(tenant_id, run_id, events))

    # --- plan registry -------------------------------------------------------------------
    async def put_plan(self, data: bytes) -> str:
        """Store plan bytes once, content-addressed; returns ``plan://sha256/<hex>``."""
        content = bytes(data)
        digest = hashlib.sha256(content).hexdigest()

        async def work(conn: Conn) -> None:
            await conn.execute(self._q.put_plan, (digest, content, len(content)))

        await self._run(work)
        return PLAN_URI_PREFIX + digest

    async def get_plan(self, sha256: str) -> bytes | None:
        """The bytes stored under a digest, or None."""
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            return None

        async def work(conn: Conn) -> bytes | None:
            cur = await conn.execute(self._q.get_plan, (sha256,))
            row = await cur.fetchone()
            return bytes(row[0]) if row else None

        return await self._run(work)


async def open_store(url: str, **options: Any) -> PostgresRunStateStore:
    """Open a PostgreSQL store from a ``postgresql://`` URL."""
    return await PostgresRunStateStore.open(url, **options)
