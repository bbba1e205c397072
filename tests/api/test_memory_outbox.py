"""The memory store's outbox: every appended event leased once at a time, acknowledged once."""

from __future__ import annotations

from contract_tests.store_helpers import happy_path, make_header
from dvt_engine.stores.memory import MemoryRunStateStore


async def test_events_are_leased_oldest_first_and_acknowledged_once() -> None:
    store = MemoryRunStateStore()
    header, _ = await store.register_run(make_header(steps=["a", "b"]))
    events = happy_path(header)
    ready = store.outbox_ready
    assert not ready.is_set()
    await store.append_batch(events)
    assert ready.is_set(), "an append wakes the consumer"
    first = await store.claim_outbox(limit=3)
    assert [i.event.event_id for i in first] == [e.event_id for e in events[:3]]
    rest = await store.claim_outbox(limit=100)
    assert [i.event.event_id for i in rest] == [e.event_id for e in events[3:]], (
        "leased events are not handed out twice")
    await store.ack_outbox([i.id for i in rest])
    await store.ack_outbox([first[0].id, first[2].id])
    assert await store.claim_outbox(limit=100) == [], "the lease of the rest still runs"


async def test_an_unacknowledged_event_comes_back_when_its_lease_ends() -> None:
    store = MemoryRunStateStore()
    header, _ = await store.register_run(make_header(steps=["a"]))
    events = happy_path(header)
    await store.append_batch(events)
    leased = await store.claim_outbox(limit=100, lease_seconds=0.0)
    await store.ack_outbox([i.id for i in leased[1:]])
    again = await store.claim_outbox(limit=100)
    assert [i.id for i in again] == [leased[0].id]
    await store.ack_outbox([leased[0].id])
    assert await store.claim_outbox(limit=100, lease_seconds=0.0) == []
