"""The PostgreSQL store's shortcuts on the append path answer exactly as the full path would."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import psycopg
import pytest
from psycopg import sql

from contract_tests.store_suite import fresh_copy, happy_path, make_header
from dvt_engine.errors import IdempotencyConflict, SchemaValidationFailed
from dvt_engine.eventlog import EventFactory
from dvt_engine.idempotency import signal_key
from dvt_engine.models.events import AppendResult, Event
from dvt_engine.stores.fingerprint import event_fingerprint
from dvt_statestore_pg.fingerprints import fingerprint
from dvt_statestore_pg.store import PostgresRunStateStore

SECRET = "AKIAABCDEFGHIJKLMNOP"  # the shape of an AWS access key id: masked before storage


def _log_size(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "dvt_events"))
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_retried_batch_with_a_masked_secret_is_a_duplicate(
    pg_store: PostgresRunStateStore, pg_dsn: str, pg_schema: str
) -> None:
    header, _ = await pg_store.register_run(make_header(steps=["a"]))
    started, step_started, completed = happy_path(header)[:3]
    leaky = completed.model_copy(update={"payload": {"output": {"key": SECRET}}})
    first = await pg_store.append_batch([started, step_started, leaky])
    assert [r.duplicate for r in first] == [False, False, False]
    stored = await pg_store.get_event_by_key(header.tenant_id, header.run_id, leaky.idempotency_key)
    assert stored is not None
    assert stored.payload == {"output": {"key": "***"}}
    size = _log_size(pg_dsn, pg_schema)
    # The retry carries the unmasked payload: its fingerprint differs from the stored one until
    # it is masked, so it must take the full path and still be answered as a duplicate.
    again = await pg_store.append_batch([fresh_copy(started), fresh_copy(leaky)])
    assert [r.duplicate for r in again] == [True, True]
    assert [r.run_seq for r in again] == [first[0].run_seq, first[2].run_seq]
    assert _log_size(pg_dsn, pg_schema) == size


async def test_a_retried_batch_still_gets_the_envelope_checks(
    pg_store: PostgresRunStateStore,
) -> None:
    header, _ = await pg_store.register_run(make_header(steps=["a"]))
    started = happy_path(header)[0]
    await pg_store.append_batch([started])
    with pytest.raises(SchemaValidationFailed):
        await pg_store.append_batch([started.model_copy(update={"run_seq": 1})])
    with pytest.raises(SchemaValidationFailed):
        await pg_store.append_batch([started.model_copy(update={"step_id": "a"})])


async def test_a_batch_mixing_stored_new_and_conflicting_keys_writes_nothing(
    pg_store: PostgresRunStateStore, pg_dsn: str, pg_schema: str
) -> None:
    header, _ = await pg_store.register_run(make_header(steps=["a"]))
    events = happy_path(header)
    await pg_store.append_batch(events[:2])
    size = _log_size(pg_dsn, pg_schema)
    changed = events[1].model_copy(update={"payload": {"kind": "other"}})
    with pytest.raises(IdempotencyConflict):
        await pg_store.append_batch([events[0], changed, events[2]])
    assert _log_size(pg_dsn, pg_schema) == size
    results = await pg_store.append_batch([fresh_copy(events[0]), events[2], events[3]])
    assert [r.duplicate for r in results] == [True, False, False]
    assert [r.run_seq for r in results] == [1, 3, 4]
    snapshot = await pg_store.get_snapshot(header.tenant_id, header.run_id)
    rebuilt = await pg_store.project(header.tenant_id, header.run_id)
    assert snapshot is not None
    assert snapshot.model_dump_json() == rebuilt.model_dump_json()


def _decision(factory: EventFactory, signal_id: str, signal_type: str = "PAUSE") -> Event:
    h = factory.header
    return factory.signal_event(
        "SignalRejected",
        signal_key(h.tenant_id, h.run_id, signal_id),
        {
            "signalId": signal_id,
            "signalType": signal_type,
            "errorCode": "SIGNAL_UNAUTHORIZED",
            "actor": {"id": "tester", "roles": ["operator"]},
        },
    )


async def test_appends_queued_on_one_run_get_their_own_answers(
    pg_store: PostgresRunStateStore,
) -> None:
    header, _ = await pg_store.register_run(make_header(steps=["a"]))
    factory = EventFactory(header, emitted_by="tester")
    await pg_store.append(factory.run_event("RunStarted", {"engine": "reference"}))
    stored = _decision(factory, "stored")
    await pg_store.append(stored)
    fresh = [_decision(factory, f"s{i}") for i in range(12)]
    conflicting = _decision(factory, "stored", signal_type="RESUME")  # same key, other payload
    repeat = fresh_copy(fresh[3])
    outcomes = await asyncio.gather(
        *(pg_store.append(e) for e in [*fresh[:6], conflicting, repeat, *fresh[6:]]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[6], IdempotencyConflict)
    results = [o for i, o in enumerate(outcomes) if i != 6]
    assert all(isinstance(r, AppendResult) for r in results)
    answers = [r for r in results if isinstance(r, AppendResult)]
    own = [answers[i] for i in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12)]
    assert sorted(r.run_seq for r in own) == list(range(3, 15))  # gap-free, one each
    assert not any(r.duplicate for r in own)
    assert answers[6].duplicate
    assert answers[6].run_seq == answers[3].run_seq
    log = await pg_store.fetch_events(header.tenant_id, header.run_id)
    assert [e.run_seq for e in log] == list(range(1, 15))
    snapshot = await pg_store.get_snapshot(header.tenant_id, header.run_id)
    rebuilt = await pg_store.project(header.tenant_id, header.run_id)
    assert snapshot is not None
    assert snapshot.model_dump_json() == rebuilt.model_dump_json()


@pytest.mark.parametrize(
    "payload",
    [
        {"output": {"flag": True}},
        {"output": {"flag": 1}},
        {"output": {"flag": 1.0}},
        {"output": {"b": "é\u2028", "a": [1, 2.5e-7, None, "x"]}},
        {"output": {"big": 2**40, "nested": {"z": {}, "y": []}}},
        {"output": {"text": "x" * 5000}},  # above the remembered size
    ],
)
def test_remembered_fingerprints_equal_the_computed_ones(payload: dict[str, object]) -> None:
    base = happy_path(make_header(steps=["a"]))[2]
    event = base.model_copy(update={"payload": payload})
    assert fingerprint(event) == event_fingerprint(event)
    assert fingerprint(event) == event_fingerprint(event)  # the second answer is remembered


def test_payloads_equal_in_python_but_not_in_json_keep_their_own_fingerprints() -> None:
    base = happy_path(make_header(steps=["a"]))[2]
    events = [
        base.model_copy(update={"payload": {"output": {"v": value}}}) for value in (True, 1, 1.0)
    ]
    for event in events * 2:  # the second round is answered from memory
        assert fingerprint(event) == event_fingerprint(event)
    # True == 1 in Python, not in JSON; 1 and 1.0 share one RFC 8785 form.
    assert fingerprint(events[0]) != fingerprint(events[1])
    assert fingerprint(events[1]) == fingerprint(events[2])


async def test_stored_keys_of_interleaved_runs_are_answered_at_their_own_positions(
    pg_store: PostgresRunStateStore, pg_dsn: str, pg_schema: str
) -> None:
    # The batch is looked up grouped by run; every answer must still land on its own event.
    one, _ = await pg_store.register_run(make_header(steps=["a", "b"]))
    two, _ = await pg_store.register_run(make_header(tenant_id=one.tenant_id, steps=["a", "b"]))
    a, b = happy_path(one), happy_path(two)
    first = await pg_store.append_batch([a[0], a[1], b[0]])
    size = _log_size(pg_dsn, pg_schema)
    batch = [fresh_copy(b[0]), a[2], fresh_copy(a[1]), b[1], fresh_copy(a[0]), a[2]]
    answers = await pg_store.append_batch(batch)
    assert [r.duplicate for r in answers] == [True, False, True, False, True, True]
    assert answers[0].event_id == first[2].event_id
    assert answers[2].event_id == first[1].event_id
    assert answers[4].event_id == first[0].event_id
    assert [answers[4].run_seq, answers[2].run_seq, answers[1].run_seq] == [1, 2, 3]
    assert [answers[0].run_seq, answers[3].run_seq] == [1, 2]
    assert answers[5].run_seq == answers[1].run_seq
    assert _log_size(pg_dsn, pg_schema) == size + 2


async def test_an_ended_run_leaves_the_appenders_memory_and_is_still_appended_to(
    pg_store: PostgresRunStateStore,
) -> None:
    # A busy process finishes runs all day: keeping each one's state would grow without end.
    header, _ = await pg_store.register_run(make_header(steps=["a"]))
    events = happy_path(header)
    await pg_store.append_batch(events[:-1])
    run = (header.tenant_id, header.run_id)
    assert run in pg_store._cache  # a running run is remembered between appends
    await pg_store.append(events[-1])
    assert run not in pg_store._cache
    # A late event (a rejected signal's record) still lands at the next runSeq.
    late = EventFactory(header, "operator").signal_event("SignalRejected", "f" * 64, {
        "signalId": "late-1", "signalType": "PAUSE", "errorCode": "RUN_TERMINAL",
        "actor": {"id": "olivia", "roles": ["operator"]}})
    result = await pg_store.append(late)
    assert result.run_seq == len(events) + 1
    snapshot = await pg_store.get_snapshot(header.tenant_id, header.run_id)
    assert snapshot is not None
    assert snapshot.last_event_seq == len(events) + 1


class _DroppedWhileRead(OrderedDict[Any, Any]):
    """The appender's cache as a concurrent append of the terminal event leaves it: the run is
    gone from it right after a reader looked it up (while the reader awaits the server)."""

    def get(self, key: Any, default: Any = None) -> Any:
        found = super().get(key, default)
        self.pop(key, None)
        return found


async def test_a_read_that_overlaps_the_append_ending_the_run_still_answers(
    pg_store: PostgresRunStateStore,
) -> None:
    header, _ = await pg_store.register_run(make_header(steps=["a"]))
    events = happy_path(header)
    await pg_store.append_batch(events[:-1])
    pg_store._cache = _DroppedWhileRead(pg_store._cache)
    snapshot = await pg_store.get_snapshot(header.tenant_id, header.run_id)
    assert snapshot is not None
    assert snapshot.last_event_seq == len(events) - 1
