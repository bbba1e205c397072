"""PostgresRunStateStore: the state store on PostgreSQL (contract §5)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool

from dvt_engine.errors import (
    DvtError,
    RunNotFound,
    SchemaValidationFailed,
    StoreUnavailable,
    UsageError,
)
from dvt_engine.event_validation import validate_event
from dvt_engine.identifiers import validate_identifier
from dvt_engine.models.events import AppendResult, Event
from dvt_engine.models.run import RunHeader, RunStatus, RunSummary
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore
from dvt_engine.projector import apply, initial_snapshot, project
from dvt_statestore_pg.config import StoreConfig, parse_store_url
from dvt_statestore_pg.migrations import apply_migrations
from dvt_statestore_pg.notify import Notifier, channel_for
from dvt_statestore_pg.queries import Queries

PLAN_URI_PREFIX = "plan://sha256/"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_T = TypeVar("_T")
Conn = psycopg.AsyncConnection[Any]

#: A tenant follower re-reads runs touched this long before its last poll, so a transaction
#: that committed late is still seen when the notification connection was down.
FOLLOW_SLACK = timedelta(seconds=60)
FOLLOW_PAGE = 500
_CACHE_RUNS = 10_000
_STALE_LIMIT = 50


@dataclass(frozen=True)
class _RunState:
    """What an appender must know of a run: its counter and current snapshot."""

    tenant_id: str
    last_seq: int
    snapshot_seq: int
    snapshot: RunSnapshot


@dataclass(frozen=True)
class OutboxItem:
    """One outbox row leased to a consumer, with its event."""

    id: int
    event: Event


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _event_from_row(run_seq: int, persisted_at: datetime, envelope: str) -> Event:
    event = Event.model_validate_json(envelope)
    return event.model_copy(update={"run_seq": run_seq, "persisted_at": _utc(persisted_at)})


def _snapshot_every(snapshot: RunSnapshot) -> int:
    # Write the stored snapshot every append for small plans; for big ones every n-th, so a
    # 1,000-step run does not rewrite a large document per event. Readers apply the short tail.
    return max(1, min(256, len(snapshot.steps) // 8))


def _envelope(event: Event) -> str:
    return event.model_dump_json(exclude={"run_seq", "persisted_at"})


def _events_document(events: list[Event]) -> str:
    """The events as the JSON array the append function reads (see migration 0002)."""
    parts = []
    for position, e in enumerate(events, start=1):
        fields = json.dumps(
            {
                "k": e.idempotency_key,
                "i": e.event_id,
                "t": e.event_type,
                "p": e.project_id,
                "v": e.environment_id,
                "s": e.step_id,
                "l": e.logical_attempt_id,
                "n": e.engine_attempt_id,
                "at": e.emitted_at.isoformat(),
                "o": position,
            },
            ensure_ascii=False,
        )
        # The envelope goes in as its exact text, so the log stores what was serialised.
        parts.append(fields[:-1] + ',"e":' + _envelope(e) + "}")
    return "[" + ",".join(parts) + "]"


class PostgresRunStateStore(RunStateStore):
    """The state store on PostgreSQL; ``open_store("postgresql://...?schema=...")`` opens one.

    Appends to one run are serialised by a row lock on the run, taken inside one server-side
    function call, so runSeq assignment and duplicate detection are decided by the database
    even when many writers race. The latest-status index, the stored snapshot and the outbox
    row are written in the same transaction as the events.
    """

    def __init__(self, url: str, **options: Any) -> None:
        config = parse_store_url(url)
        known = {k: v for k, v in options.items() if k in StoreConfig.__dataclass_fields__}
        unknown = set(options) - set(known)
        if unknown:
            raise UsageError(f"unknown PostgreSQL store options: {sorted(unknown)}")
        self.config = replace(config, **known)
        self.url = url
        self._q = Queries(self.config.schema)
        self._channel = channel_for(self.config.schema)
        self._pool: AsyncConnectionPool | None = None
        self._open_lock = asyncio.Lock()
        self._cache: OrderedDict[str, _RunState] = OrderedDict()
        # Dropped with the last holder, so the map does not grow with every run ever seen.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._notifier: Notifier | None = None

    # --- lifecycle -----------------------------------------------------------------------
    @classmethod
    async def open(cls, url: str, **options: Any) -> PostgresRunStateStore:
        """Construct, connect and (unless ``migrate=false``) bring the schema up to date."""
        store = cls(url, **options)
        await store._ensure_open()
        return store

    async def _ensure_open(self) -> AsyncConnectionPool:
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            if self._pool is not None:
                return self._pool
            pool = AsyncConnectionPool(
                self.config.conninfo,
                min_size=self.config.pool_min,
                max_size=self.config.pool_max,
                kwargs={"autocommit": True},
                open=False,
                timeout=max(self.config.timeout, 1.0),
                name=f"dvt-{self.config.schema}",
            )
            try:
                await pool.open(wait=True, timeout=max(self.config.timeout, 1.0))
                if self.config.migrate:
                    async with pool.connection() as conn:
                        await apply_migrations(conn, self.config.schema)
            except psycopg.Error as exc:
                await pool.close()
                raise StoreUnavailable(
                    f"cannot open the PostgreSQL store at {self.config.redacted()}: {exc}",
                    details={"schema": self.config.schema},
                ) from exc
            self._pool = pool
            return pool

    async def close(self) -> None:
        """Stop the listener and close every connection."""
        if self._notifier is not None:
            await self._notifier.close()
            self._notifier = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # --- plumbing ------------------------------------------------------------------------
    async def _run(self, work: Callable[[Conn], Awaitable[_T]]) -> _T:
        """Run ``work`` on a pooled connection, retrying through lost connections.

        Every operation routed here is idempotent (reads, and appends keyed by idempotency
        key), so running it again after a connection died mid-way is safe.
        """
        pool = await self._ensure_open()
        deadline = time.monotonic() + self.config.timeout
        delay = 0.05
        while True:
            try:
                async with pool.connection() as conn:
                    return await work(conn)
            except psycopg.OperationalError as exc:
                if time.monotonic() + delay >= deadline:
                    raise StoreUnavailable(
                        f"PostgreSQL store unavailable: {exc}",
                        details={"schema": self.config.schema},
                    ) from exc
                await pool.check()
                await asyncio.sleep(delay)  # back-off before reconnecting
                delay = min(delay * 2, 1.0)
            except psycopg.DataError as exc:
                raise SchemaValidationFailed(
                    f"PostgreSQL refused a value: {exc.diag.message_primary or exc}",
                    details={"sqlstate": exc.sqlstate},
                ) from exc
            except psycopg.Error as exc:
                raise StoreUnavailable(
                    f"PostgreSQL store error: {exc.diag.message_primary or exc}",
                    details={"sqlstate": exc.sqlstate},
                    retryable=False,
                ) from exc

    def _run_lock(self, run_id: str) -> asyncio.Lock:
        lock = self._locks.get(run_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[run_id] = lock
        return lock

    def _remember(self, run_id: str, state: _RunState) -> None:
        self._cache[run_id] = state
        self._cache.move_to_end(run_id)
        while len(self._cache) > _CACHE_RUNS:
            self._cache.popitem(last=False)

    async def _load_state(
        self, conn: Conn, tenant_id: str, run_id: str, *, lock: bool = False
    ) -> _RunState | None:
        if lock:
            cur = await conn.execute(self._q.lock_run, (run_id, tenant_id))
            if await cur.fetchone() is None:
                return None
        known = self._cache.get(run_id)
        if known is not None and known.tenant_id != tenant_id:
            known = None
        cur = await conn.execute(
            self._q.load_state,
            {"run": run_id, "tenant": tenant_id, "known": known.last_seq if known else -1},
        )
        row = await cur.fetchone()
        if row is None:
            return None
        last_seq, snapshot_seq, snapshot_text, seqs, envelopes = row
        if snapshot_text is None:
            # runSeqs are assigned once, under the run's lock: the same counter is the same log.
            assert known is not None
            self._cache.move_to_end(run_id)
            return known
        snapshot = RunSnapshot.model_validate_json(snapshot_text)
        if seqs:
            tail = [
                Event.model_validate_json(env).model_copy(update={"run_seq": seq})
                for seq, env in zip(seqs, envelopes, strict=True)
            ]
            snapshot = apply(snapshot, tail)
        state = _RunState(tenant_id, int(last_seq), int(snapshot_seq), snapshot)
        self._remember(run_id, state)
        return state

    def _notifier_for(self) -> Notifier:
        if self._notifier is None:
            self._notifier = Notifier(self.config.conninfo, self._channel)
        return self._notifier

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
        if not self._valid_ids(tenant_id, run_id):
            return None

        async def work(conn: Conn) -> RunHeader | None:
            cur = await conn.execute(self._q.header, (run_id, tenant_id))
            row = await cur.fetchone()
            return RunHeader.model_validate_json(row[0]) if row else None

        return await self._run(work)

    async def list_runs(
        self,
        tenant_id: str,
        *,
        status: Sequence[RunStatus] | None = None,
        project_id: str | None = None,
        environment_id: str | None = None,
        limit: int = 100,
    ) -> list[RunSummary]:
        """Runs of a tenant from the latest-status index, newest first."""
        if limit <= 0 or not self._valid_ids(tenant_id):
            return []
        for value in (project_id, environment_id):
            if value is not None and not self._valid_ids(value):
                return []
        query = self._q.list_runs(
            status=bool(status),
            project=project_id is not None,
            environment=environment_id is not None,
        )
        params = {
            "tenant": tenant_id,
            "status": [RunStatus(s).value for s in status] if status else None,
            "project": project_id,
            "environment": environment_id,
            "limit": limit,
        }

        async def work(conn: Conn) -> list[RunSummary]:
            cur = await conn.execute(query, params)
            return [
                RunSummary(
                    run_id=r[0],
                    tenant_id=r[1],
                    project_id=r[2],
                    environment_id=r[3],
                    plan_id=r[4],
                    plan_version=r[5],
                    engine=r[6],
                    status=r[7],
                    substatus=r[8],
                    last_event_seq=r[9],
                    created_at=_utc(r[10]),
                    updated_at=_utc(r[11]),
                )
                for r in await cur.fetchall()
            ]

        return await self._run(work)

    @staticmethod
    def _valid_ids(*values: str) -> bool:
        # A read with an impossible identifier finds nothing, exactly like an unknown one.
        try:
            for value in values:
                validate_identifier("id", value)
        except DvtError:
            return False
        return True

    # --- the log -------------------------------------------------------------------------
    async def append(self, event: Event) -> AppendResult:
        """Append one event; a repeated (runId, idempotencyKey) inserts nothing."""
        validate_event(event)
        self._check_identifiers(event)
        sent: set[str] = set()
        # Writers of one run in this process take turns here instead of racing in the
        # database: the cached state stays warm and the database lock is not fought over.
        async with self._run_lock(event.run_id):
            results, state = await self._run(
                lambda conn: self._append_run(conn, event.run_id, [event], sent)
            )
        if state is not None:
            self._remember(event.run_id, state)
        return results[event.idempotency_key]

    async def append_if_last(self, event: Event, expected_last_seq: int) -> AppendResult | None:
        """Append ``event`` only while the run's last runSeq is ``expected_last_seq``.

        One statement: the append query itself refuses ("stale") when the run's counter is not
        the expected one, so the check and the insert cannot be separated by another writer.
        """
        validate_event(event)
        self._check_identifiers(event)
        sent: set[str] = set()

        async def work(conn: Conn) -> tuple[AppendResult | None, _RunState | None]:
            state = await self._load_state(conn, event.tenant_id, event.run_id)
            if state is None:
                raise RunNotFound(f"run {event.run_id!r} not found",
                                  details={"runId": event.run_id})
            if state.last_seq != expected_last_seq:
                return None, None
            params, new_state = self._append_params(event.run_id, event.tenant_id, state,
                                                    [event])
            try:
                cur = await conn.execute(self._q.append, params)
                rows = await cur.fetchall()
            except psycopg.OperationalError:
                sent.add(event.event_id)  # written or not: unknown
                raise
            for outcome, _key, seq, event_id, persisted_at, _last in rows:
                if outcome == "missing":
                    raise RunNotFound(f"run {event.run_id!r} not found",
                                      details={"runId": event.run_id})
                if outcome in ("appended", "duplicate"):
                    result = AppendResult(run_seq=seq, persisted_at=_utc(persisted_at),
                                          event_id=event_id,
                                          duplicate=outcome == "duplicate")
                    return result, new_state if outcome == "appended" else None
            return None, None

        async with self._run_lock(event.run_id):
            result, state = await self._run(work)
        if state is not None:
            self._remember(event.run_id, state)
        if result is None and sent:
            # The connection was lost around a COMMIT that did store our event.
            stored = await self.get_event_by_key(event.tenant_id, event.run_id,
                                                 event.idempotency_key)
            if stored is not None and stored.event_id == event.event_id:
                assert stored.run_seq is not None and stored.persisted_at is not None
                return AppendResult(run_seq=stored.run_seq, persisted_at=stored.persisted_at,
                                    event_id=stored.event_id, duplicate=False)
        if result is not None and result.duplicate and event.event_id in sent:
            result = result.model_copy(update={"duplicate": False})
        return result

    async def append_batch(self, events: Sequence[Event]) -> list[AppendResult]:
        """Append many events in one transaction, with the same per-event guarantees."""
        if not events:
            return []
        for event in events:
            validate_event(event)
            self._check_identifiers(event)
        groups: dict[str, list[Event]] = {}
        for event in events:
            groups.setdefault(event.run_id, []).append(event)

        sent: set[str] = set()

        async def work(conn: Conn) -> dict[tuple[str, str], AppendResult]:
            found: dict[tuple[str, str], AppendResult] = {}
            states: dict[str, _RunState] = {}
            try:
                async with conn.transaction():
                    # Runs are locked in one global order, so two batches never deadlock.
                    for run_id in sorted(groups):
                        results, state = await self._append_run(conn, run_id, groups[run_id], sent)
                        found.update({(run_id, k): v for k, v in results.items()})
                        if state is not None:
                            states[run_id] = state
            except psycopg.OperationalError:
                # Lost during COMMIT, the batch may or may not be stored.
                sent.update(e.event_id for e in events)
                raise
            # Only what committed may be remembered.
            for run_id, state in states.items():
                self._remember(run_id, state)
            return found

        found = await self._run(work)
        answers: list[AppendResult] = []
        seen: set[tuple[str, str]] = set()
        for event in events:
            where = (event.run_id, event.idempotency_key)
            result = found[where]
            if where in seen:
                # A key repeated within the batch: the later copy is a duplicate of the first.
                result = result.model_copy(update={"duplicate": True})
            seen.add(where)
            answers.append(result)
        return answers

    @staticmethod
    def _check_identifiers(event: Event) -> None:
        for name in ("tenant_id", "project_id", "environment_id", "run_id", "plan_id"):
            validate_identifier(name, getattr(event, name))
        if event.step_id is not None:
            validate_identifier("step_id", event.step_id)

    async def _append_run(
        self,
        conn: Conn,
        run_id: str,
        events: list[Event],
        sent: set[str],
        *,
        locked_state: _RunState | None = None,
    ) -> tuple[dict[str, AppendResult], _RunState | None]:
        """Append the events of one run: results by idempotency key, and the run's new state.

        ``sent`` collects the event ids this call has sent for insertion, across attempts: an
        attempt after a lost connection that finds one of them stored finds its own write, not
        a duplicate. The caller remembers the new state once the transaction has committed.
        """
        tenant_id = events[0].tenant_id
        results: dict[str, AppendResult] = {}
        pending: list[Event] = []
        keys: set[str] = set()
        for event in events:
            if event.tenant_id != tenant_id:
                raise RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})
            if event.idempotency_key not in keys:
                keys.add(event.idempotency_key)
                pending.append(event)
        state = locked_state or self._cache.get(run_id)
        if state is not None and state.tenant_id != tenant_id:
            state = None
        committed: _RunState | None = None
        for _ in range(_STALE_LIMIT):
            if not pending:
                break
            params, new_state = self._append_params(run_id, tenant_id, state, pending)
            try:
                cur = await conn.execute(self._q.append, params)
                rows = await cur.fetchall()
            except psycopg.OperationalError:
                if new_state is not None:
                    sent.update(e.event_id for e in pending)  # written or not: unknown
                raise
            stale: int | None = None
            appended = False
            for outcome, key, seq, event_id, persisted_at, last_seq in rows:
                if outcome == "missing":
                    self._cache.pop(run_id, None)
                    raise RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})
                if outcome == "stale":
                    stale = int(last_seq)
                    continue
                results[key] = AppendResult(
                    run_seq=seq,
                    persisted_at=_utc(persisted_at),
                    event_id=event_id,
                    # After a lost connection the retry finds our own earlier write.
                    duplicate=outcome == "duplicate" and event_id not in sent,
                )
                appended = appended or outcome == "appended"
            if appended:
                committed = new_state
                break
            pending = [e for e in pending if e.idempotency_key not in results]
            if stale is not None and (state is None or state.last_seq != stale):
                idle = conn.info.transaction_status == pq.TransactionStatus.IDLE
                if state is not None and idle and pending:
                    # Another writer got in first. Stop guessing: read the run under its lock,
                    # so the next call cannot be stale. Under contention this is what keeps
                    # every writer progressing instead of retrying in turn.
                    async with conn.transaction():
                        locked = await self._load_state(conn, tenant_id, run_id, lock=True)
                        if locked is None:
                            raise RunNotFound(
                                f"run {run_id!r} not found", details={"runId": run_id}
                            )
                        more, committed = await self._append_run(
                            conn, run_id, pending, sent, locked_state=locked
                        )
                    results.update(more)
                    break
                # Outside a transaction the first, cold read is optimistic; inside one the
                # function already holds the run's lock, so this read cannot go stale.
                state = await self._load_state(conn, tenant_id, run_id)
                if state is None:
                    raise RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})
        else:
            raise StoreUnavailable(
                f"run {run_id!r} is being appended to too busily; try again",
                details={"runId": run_id},
            )
        return results, committed

    def _append_params(
        self, run_id: str, tenant_id: str, state: _RunState | None, pending: list[Event]
    ) -> tuple[tuple[Any, ...], _RunState | None]:
        if state is None:
            # Unknown to this process: the call answers duplicates, or says the run is stale.
            expected, status, substatus, snapshot_json, new_state = -1, "", None, None, None
        else:
            expected = state.last_seq
            stored = [
                e.model_copy(update={"run_seq": expected + i})
                for i, e in enumerate(pending, start=1)
            ]
            snapshot = apply(state.snapshot, stored)
            last = expected + len(pending)
            write = snapshot.status.is_terminal or last - state.snapshot_seq >= _snapshot_every(
                snapshot
            )
            snapshot_json = snapshot.model_dump_json() if write else None
            status = snapshot.status.value
            substatus = snapshot.substatus.value if snapshot.substatus else None
            new_state = _RunState(tenant_id, last, last if write else state.snapshot_seq, snapshot)
        params = (
            run_id,
            tenant_id,
            expected,
            _events_document(pending),
            status,
            substatus,
            snapshot_json,
            self.config.outbox,
            self._channel,
        )
        return params, new_state

    async def fetch_events(
        self, tenant_id: str, run_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        """Events of a run with runSeq > after_seq, ascending."""
        if (limit is not None and limit <= 0) or not self._valid_ids(tenant_id, run_id):
            return []

        async def work(conn: Conn) -> list[Event]:
            cur = await conn.execute(self._q.fetch, (run_id, tenant_id, after_seq, limit))
            return [_event_from_row(*row) for row in await cur.fetchall()]

        return await self._run(work)

    async def get_event_by_key(
        self, tenant_id: str, run_id: str, idempotency_key: str
    ) -> Event | None:
        """The event stored under an idempotency key, or None."""
        if not self._valid_ids(tenant_id, run_id) or not _SHA256.match(idempotency_key):
            return None

        async def work(conn: Conn) -> Event | None:
            cur = await conn.execute(self._q.by_key, (run_id, tenant_id, idempotency_key))
            row = await cur.fetchone()
            return _event_from_row(*row) if row else None

        return await self._run(work)

    async def follow(
        self, tenant_id: str, run_id: str | None = None, *, after_seq: int = 0
    ) -> AsyncIterator[Event]:
        """New events of one run (runSeq order) or of every run of the tenant."""
        await self._ensure_open()
        notifier = self._notifier_for()
        if run_id is not None:
            async for event in self._follow_run(notifier, tenant_id, run_id, after_seq):
                yield event
        else:
            async for event in self._follow_tenant(notifier, tenant_id):
                yield event

    async def _pause(self, notifier: Notifier, waiter_event: asyncio.Event) -> None:
        # Wait for a notification; the timeout is the polling fallback, shorter while the
        # listener is down.
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the event is set, and the follower would never stop.
        timeout = self.config.poll_interval if notifier.listening else 0.2
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await waiter_event.wait()

    async def _follow_run(
        self, notifier: Notifier, tenant_id: str, run_id: str, after_seq: int
    ) -> AsyncIterator[Event]:
        watermark = after_seq
        with notifier.subscribe(tenant_id, run_id) as waiter:
            while True:
                waiter.event.clear()
                batch = await self.fetch_events(
                    tenant_id, run_id, after_seq=watermark, limit=FOLLOW_PAGE
                )
                for event in batch:
                    assert event.run_seq is not None
                    watermark = event.run_seq
                    yield event
                if len(batch) < FOLLOW_PAGE:
                    await self._pause(notifier, waiter.event)

    async def _follow_tenant(self, notifier: Notifier, tenant_id: str) -> AsyncIterator[Event]:
        if not self._valid_ids(tenant_id):
            with notifier.subscribe(tenant_id, None) as waiter:
                while True:
                    await self._pause(notifier, waiter.event)
        start = await self._run(self._db_now)
        since = start
        watermarks: dict[str, int] = {}
        with notifier.subscribe(tenant_id, None) as waiter:
            while True:
                waiter.event.clear()

                async def touched(conn: Conn, since: datetime = since) -> list[tuple[Any, ...]]:
                    cur = await conn.execute(
                        self._q.active_runs_since, (tenant_id, since - FOLLOW_SLACK)
                    )
                    return list(await cur.fetchall())

                rows = await self._run(touched)
                for run, last_seq, now in sorted(rows, key=lambda r: str(r[0])):
                    since = max(since, now)
                    if last_seq <= watermarks.get(run, 0):
                        continue
                    async for event in self._tenant_run_events(tenant_id, run, watermarks, start):
                        yield event
                await self._pause(notifier, waiter.event)

    async def _tenant_run_events(
        self, tenant_id: str, run_id: str, watermarks: dict[str, int], start: datetime
    ) -> AsyncIterator[Event]:
        while True:
            seen = run_id in watermarks
            after = watermarks.get(run_id, 0)

            async def work(conn: Conn, seen: bool = seen, after: int = after) -> list[Event]:
                if seen:
                    cur = await conn.execute(self._q.fetch, (run_id, tenant_id, after, FOLLOW_PAGE))
                else:
                    # A run first seen by this follower: only what was persisted after it began.
                    cur = await conn.execute(
                        self._q.fetch_since, (run_id, tenant_id, after, start, FOLLOW_PAGE)
                    )
                return [_event_from_row(*row) for row in await cur.fetchall()]

            batch = await self._run(work)
            if not seen and not batch:
                # Nothing new since the follower began: start from the run's current end.
                cur_seq = await self._run(lambda conn: self._last_seq(conn, tenant_id, run_id))
                watermarks[run_id] = cur_seq
                return
            for event in batch:
                assert event.run_seq is not None
                watermarks[run_id] = event.run_seq
                yield event
            if len(batch) < FOLLOW_PAGE:
                return

    async def _last_seq(self, conn: Conn, tenant_id: str, run_id: str) -> int:
        cur = await conn.execute(self._q.run_last_seq, (run_id, tenant_id))
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _db_now(self, conn: Conn) -> datetime:
        cur = await conn.execute(self._q.db_now)
        row = await cur.fetchone()
        assert row is not None
        value: datetime = row[0]
        return value

    # --- snapshots -----------------------------------------------------------------------
    async def get_snapshot(self, tenant_id: str, run_id: str) -> RunSnapshot | None:
        """The stored projection brought up to the end of the log (one round trip)."""
        if not self._valid_ids(tenant_id, run_id):
            return None

        async def work(conn: Conn) -> RunSnapshot | None:
            state = await self._load_state(conn, tenant_id, run_id)
            return state.snapshot if state else None

        return await self._run(work)

    async def project(self, tenant_id: str, run_id: str) -> RunSnapshot:
        """Recompute a run's snapshot from its whole log."""
        if not self._valid_ids(tenant_id, run_id):
            raise RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})

        async def work(conn: Conn) -> tuple[RunHeader | None, list[Event]]:
            cur = await conn.execute(self._q.header, (run_id, tenant_id))
            row = await cur.fetchone()
            if row is None:
                return None, []
            cur = await conn.execute(self._q.all_events, (run_id, tenant_id))
            return (
                RunHeader.model_validate_json(row[0]),
                [_event_from_row(*r) for r in await cur.fetchall()],
            )

        header, events = await self._run(work)
        if header is None:
            raise RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})
        return project(header, events)

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

    # --- outbox --------------------------------------------------------------------------
    async def claim_outbox(self, limit: int = 100, lease_seconds: float = 30.0) -> list[OutboxItem]:
        """Lease up to ``limit`` undelivered outbox events, oldest first."""

        async def work(conn: Conn) -> list[OutboxItem]:
            cur = await conn.execute(self._q.claim_outbox, (limit, lease_seconds))
            leased = sorted(await cur.fetchall())
            items = []
            for outbox_id, run_id, _tenant, run_seq in leased:
                cur = await conn.execute(self._q.event_at, (run_id, run_seq))
                row = await cur.fetchone()
                assert row is not None  # the foreign key guarantees it
                items.append(OutboxItem(int(outbox_id), _event_from_row(*row)))
            return items

        return await self._run(work)

    async def ack_outbox(self, ids: Sequence[int]) -> None:
        """Mark leased outbox rows as delivered."""

        async def work(conn: Conn) -> None:
            await conn.execute(self._q.ack_outbox, (list(ids),))

        await self._run(work)


async def open_store(url: str, **options: Any) -> PostgresRunStateStore:
    """Open a PostgreSQL store from a ``postgresql://`` URL."""
    return await PostgresRunStateStore.open(url, **options)
