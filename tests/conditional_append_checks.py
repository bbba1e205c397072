"""Checks of ``append_batch_if_last`` that every bundled store must pass (memory, PostgreSQL)."""

from __future__ import annotations

from contract_tests.store_helpers import fresh_copy, happy_path, make_header
from dvt_engine.eventlog import EventFactory
from dvt_engine.models.run import StepStatus
from dvt_engine.ports import RunStateStore


async def appends_only_at_the_expected_run_seq(store: RunStateStore) -> None:
    """All events go in at the expected runSeq, in order, or none and None."""
    header, _ = await store.register_run(make_header(steps=["a", "b"]))
    run_started, a_started, a_done = happy_path(header)[:3]
    await store.append(run_started)
    assert await store.append_batch_if_last([a_started, a_done], 0) is None
    assert await store.append_batch_if_last([a_started, a_done], 2) is None
    assert await store.fetch_events(header.tenant_id, header.run_id, after_seq=1) == []
    results = await store.append_batch_if_last([a_started, a_done], 1)
    assert results is not None
    assert [(r.run_seq, r.duplicate) for r in results] == [(2, False), (3, False)]
    stored = await store.fetch_events(header.tenant_id, header.run_id)
    assert [e.event_id for e in stored] == [run_started.event_id, a_started.event_id,
                                           a_done.event_id]
    snapshot = await store.get_snapshot(header.tenant_id, header.run_id)
    assert snapshot is not None
    assert snapshot.last_event_seq == 3
    assert snapshot.step("a").status == StepStatus.SUCCESS


async def refuses_once_another_writer_moved_the_run(
    store: RunStateStore, other: RunStateStore
) -> None:
    """A batch at a runSeq another writer (another process, for PostgreSQL) has passed is None,
    even though this store wrote the runSeq it expects."""
    header, _ = await store.register_run(make_header(steps=["a", "b"]))
    run_started, a_started, a_done, b_started, b_done = happy_path(header)[:5]
    assert await store.append_batch_if_last([run_started, a_started], 0) is not None
    await other.append(a_done)
    assert await store.append_batch_if_last([b_started, b_done], 2) is None
    stored = await store.fetch_events(header.tenant_id, header.run_id)
    assert [e.event_type for e in stored] == ["RunStarted", "StepStarted", "StepCompleted"]
    results = await store.append_batch_if_last([b_started, b_done], 3)
    assert results is not None
    assert [r.run_seq for r in results] == [4, 5]


async def answers_stored_keys_as_duplicates(store: RunStateStore) -> None:
    """A retried event in the batch is answered with its stored runSeq; the rest go in."""
    header, _ = await store.register_run(make_header(steps=["a", "b"]))
    run_started, a_started = happy_path(header)[:2]
    await store.append_batch([run_started, a_started])
    b_started = EventFactory(header, emitted_by="step-runner").step_event(
        "StepStarted", "b", {"kind": "noop"})
    results = await store.append_batch_if_last([fresh_copy(a_started), b_started], 2)
    assert results is not None
    assert [(r.run_seq, r.duplicate) for r in results] == [(2, True), (3, False)]
    assert results[0].event_id == a_started.event_id
    assert len(await store.fetch_events(header.tenant_id, header.run_id)) == 3
