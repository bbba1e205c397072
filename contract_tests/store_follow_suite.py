"""Store contract: following one run, and a tenant stream with resumable cursors."""

from __future__ import annotations

from contract_tests.store_helpers import (
    Collector,
    StoreFactory,
    StoreSuiteBase,
    happy_path,
    new_id,
)
from dvt_engine.eventlog import EventFactory
from dvt_engine.models.events import Event
from dvt_engine.ports import RunStateStore


class FollowContract(StoreSuiteBase):
    """follow() and follow_tenant()."""

    # --- follow -----------------------------------------------------------------------------
    async def test_follow_a_run_delivers_history_then_new_events_in_order(
        self, store: RunStateStore, store_factory: StoreFactory
    ) -> None:
        header = await self.registered(store)
        events = happy_path(header)
        first = await store.append_batch(events[:3])
        writer = await store_factory()
        follower = Collector(
            store.follow(header.tenant_id, header.run_id, after_seq=first[0].run_seq)
        )
        try:
            for event in events[3:]:
                await writer.append(event)
            assert await follower.wait_for(len(events) - 1), "events were not delivered"
        finally:
            await follower.stop()
        got = follower.events
        assert [e.event_id for e in got] == [e.event_id for e in events[1:]]
        assert [e.run_seq for e in got] == sorted(e.run_seq or 0 for e in got)

    async def test_follow_a_tenant_sees_its_runs_only(
        self, store: RunStateStore, store_factory: StoreFactory
    ) -> None:
        tenant = new_id("tenant")
        one = await self.registered(store, tenant_id=tenant)
        two = await self.registered(store, tenant_id=tenant)
        stranger = await self.registered(store)
        writer = await store_factory()
        f = EventFactory(one, emitted_by="engine")
        follower = Collector(store.follow(tenant))
        try:
            # The follower sees what is appended after it began: append markers until one
            # arrives, so the test does not depend on when the follower's task got going.
            for n in range(1, 60):
                await writer.append(f.run_event("RunMarker", {"n": n}, discriminator=n))
                if await follower.wait_for(1, timeout=0.5):
                    break
            assert follower.events, "the tenant follower never delivered anything"
            ours = happy_path(one)[:2] + happy_path(two)[:2]
            for event in [*happy_path(stranger)[:2], *ours]:
                await writer.append(event)
            assert await follower.wait_for(len(ours), where=_not_marker), "not delivered"
        finally:
            await follower.stop()
        got = follower.events
        rest = follower.matching(_not_marker)
        assert {e.tenant_id for e in got} == {tenant}
        assert sorted(e.event_id for e in rest) == sorted(e.event_id for e in ours)
        for run_id in (one.run_id, two.run_id):
            seqs = [e.run_seq for e in rest if e.run_id == run_id]
            assert seqs == sorted(seqs)


def _not_marker(event: Event) -> bool:
    return event.event_type != "RunMarker"
