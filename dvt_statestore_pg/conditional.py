"""Conditional appends: events that go in only while the run is at an expected runSeq."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from dvt_engine.errors import UsageError
from dvt_engine.event_validation import prepared_for_storage
from dvt_engine.models.events import AppendResult, Event
from dvt_engine.ports import RunStateStore
from dvt_engine.stores.fingerprint import refuse_conflict
from dvt_statestore_pg.appends import (
    STORE_NAME,
    Appender,
    RunState,
    _check_identifiers,
    _not_found,
)
from dvt_statestore_pg.core import Conn, utc


class ConditionalAppender(Appender):
    """append_if_last and append_batch_if_last: one call of the append function, which checks
    the expected runSeq under the run's lock, so the check and the insert cannot be split."""

    async def append_if_last(self, event: Event, expected_last_seq: int) -> AppendResult | None:
        """Append ``event`` only while the run's last runSeq is ``expected_last_seq``.

        One call of the append function, which already checks the expected runSeq under the
        run's lock ("stale" otherwise): the check and the insert cannot be split by a writer.
        """
        event = prepared_for_storage(event)
        _check_identifiers(event)
        run = (event.tenant_id, event.run_id)
        sent: set[str] = set()

        async def work(conn: Conn) -> tuple[AppendResult | None, RunState | None]:
            # Known at the expected runSeq, the run needs no read: the function checks the
            # runSeq under the run's lock and answers "stale" if another writer got in.
            state = self._cache.get(run)
            read = state is None or state.last_seq != expected_last_seq
            if read:
                state = await self._load_state(conn, run)
                if state is None:
                    raise _not_found(event.run_id)
                if state.last_seq != expected_last_seq:
                    return None, None
            params, new_state = self._append_params(run, state, [event])
            try:
                cur = await conn.execute(self._q.append, params)
                rows = await cur.fetchall()
            except psycopg.OperationalError:
                sent.add(event.event_id)  # written or not: unknown
                raise
            for outcome, _key, seq, event_id, persisted_at, _last, stored_hash in rows:
                if outcome == "missing":
                    raise _not_found(event.run_id)
                if outcome == "stale":
                    self._cache.pop(run, None)  # another writer: the next call reads the run
                    return None, None
                if outcome == "duplicate":
                    await self._refuse_conflict(conn, run, event, stored_hash)
                    # The function answers a stored key before it compares runSeqs.
                    if not read and not await self._still_at(conn, run, expected_last_seq):
                        return None, None
                if outcome in ("appended", "duplicate"):
                    mine = outcome == "appended" or event_id in sent
                    result = AppendResult(run_seq=seq, persisted_at=utc(persisted_at),
                                          event_id=event_id, duplicate=not mine)
                    return result, new_state if outcome == "appended" else None
            return None, None

        async with self._run_lock(run):
            result, state = await self._run(work)
        if state is not None:
            self._remember(run, state)
        if result is None and sent:
            # The connection was lost around a COMMIT that may have stored this very event.
            assert isinstance(self, RunStateStore)  # the assembled store
            stored = await self.get_event_by_key(event.tenant_id, event.run_id,
                                                 event.idempotency_key)
            if stored is not None and stored.event_id == event.event_id:
                assert stored.run_seq is not None
                assert stored.persisted_at is not None
                return AppendResult(run_seq=stored.run_seq, persisted_at=stored.persisted_at,
                                    event_id=stored.event_id, duplicate=False)
        return result

    async def append_batch_if_last(
        self, events: Sequence[Event], expected_last_seq: int
    ) -> list[AppendResult] | None:
        """Append events of one run only while its last runSeq is ``expected_last_seq``.

        One call of the append function for the run (one transaction, one commit), like
        ``append_if_last``; keys already stored are answered as duplicates and the rest go in
        at the expected runSeq, or nothing is appended when another writer got in first.
        """
        if not events:
            return []
        events = [prepared_for_storage(e) for e in events]
        for event in events:
            _check_identifiers(event)
        run = (events[0].tenant_id, events[0].run_id)
        if any((e.tenant_id, e.run_id) != run for e in events):
            raise UsageError("append_batch_if_last takes the events of one run")
        first: dict[str, Event] = {}
        for event in events:
            earlier = first.setdefault(event.idempotency_key, event)
            if earlier is not event:
                refuse_conflict(event, earlier, store=STORE_NAME)
        sent: set[str] = set()

        async def work(conn: Conn) -> tuple[dict[str, AppendResult] | None, RunState | None]:
            # As in append_if_last: known at the expected runSeq, the run needs no read.
            state = self._cache.get(run)
            if state is None or state.last_seq != expected_last_seq:
                state = await self._load_state(conn, run)
                if state is None:
                    raise _not_found(run[1])
                if state.last_seq != expected_last_seq:
                    return None, None
            results: dict[str, AppendResult] = {}
            pending = list(first.values())
            while pending:
                params, new_state = self._append_params(run, state, pending)
                try:
                    cur = await conn.execute(self._q.append, params)
                    rows = await cur.fetchall()
                except psycopg.OperationalError:
                    sent.update(e.event_id for e in pending)  # written or not: unknown
                    raise
                appended = False
                for outcome, key, seq, event_id, persisted_at, last_seq, stored_hash in rows:
                    if outcome == "missing":
                        self._cache.pop(run, None)
                        raise _not_found(run[1])
                    if outcome == "stale":
                        if int(last_seq) != expected_last_seq:
                            self._cache.pop(run, None)
                            return None, None
                        continue  # only duplicates stopped it: the rest go in next round
                    if outcome == "duplicate":
                        await self._refuse_conflict(conn, run, first[key], stored_hash)
                    results[key] = AppendResult(
                        run_seq=seq, persisted_at=utc(persisted_at), event_id=event_id,
                        duplicate=outcome == "duplicate" and event_id not in sent,
                    )
                    appended = appended or outcome == "appended"
                if appended:
                    return results, new_state
                pending = [e for e in pending if e.idempotency_key not in results]
            if not sent and not await self._still_at(conn, run, expected_last_seq):
                return None, None  # all stored already, and the run moved on meanwhile
            return results, None

        async with self._run_lock(run):
            found, state = await self._run(work)
        if state is not None:
            self._remember(run, state)
        if found is None:
            return None
        answers: list[AppendResult] = []
        seen: set[str] = set()
        for event in events:
            result = found[event.idempotency_key]
            if event.idempotency_key in seen:
                result = result.model_copy(update={"duplicate": True})
            seen.add(event.idempotency_key)
            answers.append(result)
        return answers

