"""Appending to the log: runSeq assignment, duplicates and conflicts, the snapshot on the way."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq

from dvt_engine.errors import RunNotFound, StoreUnavailable
from dvt_engine.event_validation import prepared_for_storage, validate_envelope
from dvt_engine.models.events import AppendResult, Event
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.projector import Projection, apply
from dvt_engine.stores.fingerprint import refuse_conflict
from dvt_statestore_pg.core import (
    Conn,
    RunKey,
    StoreCore,
    check_identifier,
    event_with_seq,
    utc,
)
from dvt_statestore_pg.fingerprints import fingerprint
from dvt_statestore_pg.folding import AppendFolder

_CACHE_RUNS = 10_000
_STALE_LIMIT = 50
STORE_NAME = "postgresql"


@dataclass(frozen=True)
class RunState:
    """What an appender must know of a run: its counter and current snapshot."""

    last_seq: int
    snapshot_seq: int
    snapshot: RunSnapshot
    #: The snapshot as a Projection to fold the next append into; only while it is still at
    #: ``last_seq`` (folding for a call that then failed moves it on, and it is rebuilt).
    projection: Projection | None = field(default=None, compare=False, repr=False)

    def folding(self) -> Projection:
        """A Projection at this state to fold the next events into."""
        kept = self.projection
        if kept is not None and kept.last_event_seq == self.last_seq:
            return kept
        return Projection(self.snapshot)


def _snapshot_every(snapshot: RunSnapshot) -> int:
    # Write the stored snapshot every append for small plans; for big ones every n-th, so a
    # 1,000-step run does not rewrite a large document per event. Readers apply the short tail.
    return max(1, min(256, len(snapshot.steps) // 8))


def envelope_text(event: Event) -> str:
    """The envelope as stored: everything but the store-assigned runSeq and persistedAt."""
    return event.model_dump_json(exclude={"run_seq", "persisted_at"})


def events_document(events: list[Event]) -> str:
    """The events as the JSON array the append function reads (see migrations 0002, 0003)."""
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
                "h": fingerprint(e),
            },
            ensure_ascii=False,
        )
        # The envelope goes in as its exact text, so the log stores what was serialised.
        parts.append(fields[:-1] + ',"e":' + envelope_text(e) + "}")
    return "[" + ",".join(parts) + "]"


# (eventType, has a stepId) pairs validate_envelope accepted: its verdict depends on nothing
# else once runSeq and persistedAt are unset, and the enum lookups showed in retry profiles.
_GOOD_SHAPES: set[tuple[str, bool]] = set()


def _check_envelope(event: Event) -> None:
    """``validate_envelope(event)``, remembered by the event's shape."""
    shape = (event.event_type, event.step_id is None)
    if event.run_seq is None and event.persisted_at is None and shape in _GOOD_SHAPES:
        return
    validate_envelope(event)
    if event.run_seq is None and event.persisted_at is None and len(_GOOD_SHAPES) < 1000:
        _GOOD_SHAPES.add(shape)


def _stored_answer(row: Any, sent: set[str]) -> AppendResult:
    """The answer for an event found stored: (runSeq, eventId, persistedAt, ...) of its row."""
    # Values the store wrote: not validated again (that was a fifth of a retry's time).
    return AppendResult.from_trusted({
        "run_seq": row[0],
        "persisted_at": utc(row[2]),
        "event_id": row[1],
        # After a lost connection the retry finds our own earlier write.
        "duplicate": row[1] not in sent,
    })


def _check_identifiers(event: Event) -> None:
    # The ids of a run repeat on every event: checked once per value (check_identifier).
    for name in ("tenant_id", "project_id", "environment_id", "run_id", "plan_id", "step_id"):
        value = getattr(event, name)
        if value is None and name == "step_id":
            continue
        check_identifier(name, value)


def _not_found(run_id: str) -> RunNotFound:
    return RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})


class Appender(StoreCore):
    """append and append_batch: one server-side function call per run, under the run's lock.

    Appends to one run are serialised by the run's advisory writer lock, taken inside one
    function call, so runSeq assignment and duplicate detection are decided by the database
    even when many writers race. The latest-status index, the stored snapshot and the outbox row are
    written in the same transaction as the events.
    """

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._cache: OrderedDict[RunKey, RunState] = OrderedDict()
        # Dropped with the last holder, so the map does not grow with every run ever seen.
        self._locks: weakref.WeakValueDictionary[RunKey, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._folder = AppendFolder(self._write_run)

    def _run_lock(self, run: RunKey) -> asyncio.Lock:
        lock = self._locks.get(run)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[run] = lock
        return lock

    def _remember(self, run: RunKey, state: RunState) -> None:
        if state.snapshot.status.is_terminal:
            # An ended run is rarely appended to again (a late signal's rejection reads it once
            # more); keeping it would fill the cache with every run a busy process finished.
            self._cache.pop(run, None)
            return
        self._cache[run] = state
        self._cache.move_to_end(run)
        while len(self._cache) > _CACHE_RUNS:
            self._cache.popitem(last=False)

    async def _load_state(self, conn: Conn, run: RunKey, *, lock: bool = False) -> RunState | None:
        tenant_id, run_id = run
        if lock:
            await conn.execute(self._q.lock_run, (tenant_id, run_id))
        known = self._cache.get(run)
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
            if run in self._cache:  # an append may have ended the run (and dropped it) meanwhile
                self._cache.move_to_end(run)
            return known
        snapshot = RunSnapshot.model_validate_json(snapshot_text)
        if seqs:
            tail = [event_with_seq(env, seq) for seq, env in zip(seqs, envelopes, strict=True)]
            snapshot = apply(snapshot, tail)
        state = RunState(int(last_seq), int(snapshot_seq), snapshot)
        self._remember(run, state)
        return state

    async def append(self, event: Event) -> AppendResult:
        """Append one event; a repeated (runId, idempotencyKey) inserts nothing."""
        event = prepared_for_storage(event)
        _check_identifiers(event)
        # Appends to a run that queue up behind a write go together in the next call.
        return await self._folder.append((event.tenant_id, event.run_id), event)

    async def _write_run(self, run: RunKey, events: list[Event]) -> dict[str, AppendResult]:
        """Append events of one run (distinct keys) in one call; results by idempotency key."""
        sent: set[str] = set()
        # Writers of one run in this process take turns here instead of racing in the
        # database: the cached state stays warm and the database lock is not fought over.
        async with self._run_lock(run):
            results, state = await self._run(
                lambda conn: self._append_run(conn, run, events, sent)
            )
        if state is not None:
            self._remember(run, state)
        return results

    async def append_batch(self, events: Sequence[Event]) -> list[AppendResult]:
        """Append many events in one transaction, with the same per-event guarantees."""
        if not events:
            return []
        events = list(events)
        for event in events:
            _check_identifiers(event)
        groups: dict[RunKey, list[Event]] = {}
        for event in events:
            groups.setdefault((event.tenant_id, event.run_id), []).append(event)

        sent: set[str] = set()

        async def work(conn: Conn) -> dict[tuple[str, str, str], AppendResult]:
            found: dict[tuple[str, str, str], AppendResult] = {}
            states: dict[RunKey, RunState] = {}
            todo = await self._answer_stored(conn, groups, sent, found)
            if not todo:
                return found  # all retries: no transaction, no lock, no projection
            try:
                async with conn.transaction():
                    if len(todo) > 1:
                        # Every run locked before anything is written: a transaction that owns
                        # an id never waits for a run (the tenant stream's order relies on it),
                        # and one global lock order means two batches never deadlock.
                        await conn.execute(
                            self._q.lock_runs, ([t for t, _ in todo], [r for _, r in todo])
                        )
                    for run in sorted(todo):
                        results, state = await self._append_run(conn, run, todo[run], sent)
                        found.update({(*run, k): v for k, v in results.items()})
                        if state is not None:
                            states[run] = state
            except psycopg.OperationalError:
                # Lost during COMMIT, the batch may or may not be stored.
                sent.update(e.event_id for e in events)
                raise
            # Only what committed may be remembered.
            for run, state in states.items():
                self._remember(run, state)
            return found

        found = await self._run(work)
        if len(found) == len(events):
            # No key repeated within the batch: each event has its own answer.
            return [found[(e.tenant_id, e.run_id, e.idempotency_key)] for e in events]
        answers: list[AppendResult] = []
        seen: set[tuple[str, str, str]] = set()
        for event in events:
            where = (event.tenant_id, event.run_id, event.idempotency_key)
            result = found[where]
            if where in seen:
                # A key repeated within the batch: the later copy is a duplicate of the first.
                result = result.model_copy(update={"duplicate": True})
            seen.add(where)
            answers.append(result)
        return answers

    async def _answer_stored(
        self,
        conn: Conn,
        groups: dict[RunKey, list[Event]],
        sent: set[str],
        found: dict[tuple[str, str, str], AppendResult],
    ) -> dict[RunKey, list[Event]]:
        """Answer the keys already stored (one statement for the whole batch); the rest, by run,
        prepared for storage.

        A stored key with other content raises IdempotencyConflict before anything is written.
        """
        document: list[tuple[str, str, int, list[str]]] = []
        offset = 0
        for (tenant_id, run_id), group in groups.items():
            document.append((tenant_id, run_id, offset, [e.idempotency_key for e in group]))
            offset += len(group)
        cur = await conn.execute(self._q.stored_keys, (json.dumps(document),))
        # By position in the batch: (runSeq, eventId, persistedAt, contentHash) or None.
        stored: list[Any] = [None] * offset
        for row in await cur.fetchall():
            stored[row[0]] = row[1:]
        todo: dict[RunKey, list[Event]] = {}
        differing: list[tuple[RunKey, Event, Any]] = []
        position = 0
        # Every event is checked before any conflict is raised, as when each was prepared first.
        for run, group in groups.items():
            tenant_id, run_id = run
            for event in group:
                row = stored[position]
                position += 1
                if row is None:
                    todo.setdefault(run, []).append(prepared_for_storage(event))
                elif row[3] is not None and fingerprint(event) == row[3]:
                    # The same content as the stored event, whose payload passed every payload
                    # check when it was written: only the envelope's checks remain.
                    _check_envelope(event)
                    found[(tenant_id, run_id, event.idempotency_key)] = _stored_answer(row, sent)
                else:
                    differing.append((run, prepared_for_storage(event), row))
        for run, event, row in differing:
            await self._refuse_conflict(conn, run, event, row[3])
            found[(*run, event.idempotency_key)] = _stored_answer(row, sent)
        return todo

    async def _still_at(self, conn: Conn, run: RunKey, last_seq: int) -> bool:
        """Whether the run's last runSeq is ``last_seq`` (read from the database)."""
        now = await self._load_state(conn, run)
        return now is not None and now.last_seq == last_seq

    async def _refuse_conflict(
        self, conn: Conn, run: RunKey, event: Event, stored_hash: str | None
    ) -> None:
        if stored_hash is None:
            # Stored before content hashes existed: fingerprint the stored envelope instead.
            cur = await conn.execute(
                self._q.content_by_key, (run[1], run[0], event.idempotency_key)
            )
            row = await cur.fetchone()
            assert row is not None  # the function just found it; committed rows never change
            refuse_conflict(event, Event.model_validate_json(row[0]), store=STORE_NAME)
        else:
            refuse_conflict(event, stored_hash, store=STORE_NAME)

    async def _append_run(
        self,
        conn: Conn,
        run: RunKey,
        events: list[Event],
        sent: set[str],
        *,
        locked_state: RunState | None = None,
    ) -> tuple[dict[str, AppendResult], RunState | None]:
        """Append the events of one run: results by idempotency key, and the run's new state.

        ``sent`` collects the event ids this call has sent for insertion, across attempts: an
        attempt after a lost connection that finds one of them stored finds its own write, not
        a duplicate. The caller remembers the new state once the transaction has committed.
        A key stored with another event type or payload raises IdempotencyConflict before
        anything of this call is written.
        """
        run_id = run[1]
        results: dict[str, AppendResult] = {}
        pending: list[Event] = []
        first: dict[str, Event] = {}
        for event in events:
            earlier = first.get(event.idempotency_key)
            if earlier is None:
                first[event.idempotency_key] = event
                pending.append(event)
            else:
                refuse_conflict(event, earlier, store=STORE_NAME)
        state = locked_state or self._cache.get(run)
        if state is None and conn.info.transaction_status != pq.TransactionStatus.IDLE:
            # Unknown to this process, inside a batch: read the run first rather than send the
            # whole batch to be told it is stale (the function parses every event to say so).
            state = await self._load_state(conn, run)
            if state is None:
                raise _not_found(run_id)
        committed: RunState | None = None
        for _ in range(_STALE_LIMIT):
            if not pending:
                break
            params, new_state = self._append_params(run, state, pending)
            try:
                cur = await conn.execute(self._q.append, params)
                rows = await cur.fetchall()
            except psycopg.OperationalError:
                if new_state is not None:
                    sent.update(e.event_id for e in pending)  # written or not: unknown
                raise
            stale: int | None = None
            appended = False
            for outcome, key, seq, event_id, persisted_at, last_seq, stored_hash in rows:
                if outcome == "missing":
                    self._cache.pop(run, None)
                    raise _not_found(run_id)
                if outcome == "stale":
                    stale = int(last_seq)
                    continue
                if outcome == "duplicate":
                    await self._refuse_conflict(conn, run, first[key], stored_hash)
                results[key] = AppendResult(
                    run_seq=seq,
                    persisted_at=utc(persisted_at),
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
                        locked = await self._load_state(conn, run, lock=True)
                        if locked is None:
                            raise _not_found(run_id)
                        more, committed = await self._append_run(
                            conn, run, pending, sent, locked_state=locked
                        )
                    results.update(more)
                    break
                # Outside a transaction the first, cold read is optimistic; inside one the
                # function already holds the run's lock, so this read cannot go stale.
                state = await self._load_state(conn, run)
                if state is None:
                    raise _not_found(run_id)
        else:
            raise StoreUnavailable(
                f"run {run_id!r} is being appended to too busily; try again",
                details={"runId": run_id},
            )
        return results, committed

    def _append_params(
        self, run: RunKey, state: RunState | None, pending: list[Event]
    ) -> tuple[tuple[Any, ...], RunState | None]:
        tenant_id, run_id = run
        if state is None:
            # Unknown to this process: the call answers duplicates, or says the run is stale.
            expected, status, substatus, snapshot_json, new_state = -1, "", None, None, None
        else:
            expected = state.last_seq
            stored = [
                e.model_copy(update={"run_seq": expected + i})
                for i, e in enumerate(pending, start=1)
            ]
            # The run's Projection is kept from append to append: building one indexes every
            # step, which cost a 200-step run more than the rest of the append's Python.
            projection = state.folding()
            projection.fold(stored)
            snapshot = projection.snapshot()
            last = expected + len(pending)
            write = snapshot.status.is_terminal or last - state.snapshot_seq >= _snapshot_every(
                snapshot
            )
            snapshot_json = snapshot.model_dump_json() if write else None
            status = snapshot.status.value
            substatus = snapshot.substatus.value if snapshot.substatus else None
            new_state = RunState(last, last if write else state.snapshot_seq, snapshot,
                                 projection)
        params = (
            run_id,
            tenant_id,
            expected,
            events_document(pending),
            status,
            substatus,
            snapshot_json,
            self.config.outbox,
            self._channel,
        )
        return params, new_state
