"""Store contract: following one run, and a tenant stream with resumable cursors."""

from __future__ import annotations

import pytest

from contract_tests.store_helpers import (
    Collector,
    StoreFactory,
    StoreSuiteBase,
    TenantCollector,
    happy_path,
    new_id,
)
from dvt_engine.errors import UsageError
from dvt_engine.eventlog import EventFactory
from dvt_engine.models.events import Event
from dvt_engine.ports import TENANT_LOG_START, RunStateStore


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


    # --- the tenant stream and its cursors --------------------------------------------------
    async def test_tenant_stream_replays_from_the_start_and_resumes_from_any_cursor(
        self, store: RunStateStore, store_factory: StoreFactory
    ) -> None:
        tenant = new_id("tenant")
        one = await self.registered(store, tenant_id=tenant)
        two = await self.registered(store, tenant_id=tenant)
        stranger = await self.registered(store)
        writer = await store_factory()
        a, b = happy_path(one), happy_path(two)
        for x, y, z in zip(a, b, happy_path(stranger), strict=False):
            await writer.append(x)
            await writer.append_batch([y, z])
        everything = TenantCollector(store.follow_tenant(tenant, after=TENANT_LOG_START))
        try:
            assert await everything.wait_for(len(a) + len(b)), "the replay stopped short"
        finally:
            await everything.stop()
        log = everything.items
        assert {e.tenant_id for e in everything.events} == {tenant}
        # Appended one after the other, so commit order is append order.
        assert [e.event_id for e in everything.events] == [
            e.event_id for pair in zip(a, b, strict=False) for e in pair
        ]
        assert len({item.cursor for item in log}) == len(log)
        for k in (0, 3, len(log) - 2):
            resumed = TenantCollector(store.follow_tenant(tenant, after=log[k].cursor))
            try:
                assert await resumed.wait_for(len(log) - k - 1)
                assert [i.cursor for i in resumed.items] == [i.cursor for i in log[k + 1 :]]
                assert resumed.events == [i.event for i in log[k + 1 :]]
            finally:
                await resumed.stop()

    async def test_a_restarted_tenant_follower_gets_what_was_written_while_it_was_down(
        self, store: RunStateStore, store_factory: StoreFactory
    ) -> None:
        tenant = new_id("tenant")
        header = await self.registered(store, tenant_id=tenant, steps=[f"s{i}" for i in range(6)])
        events = happy_path(header)
        writer = await store_factory()
        follower = TenantCollector(store.follow_tenant(tenant, after=TENANT_LOG_START))
        try:
            await writer.append(events[0])
            assert await follower.wait_for(1)
        finally:
            await follower.stop()
        cursor = follower.cursor
        assert cursor is not None
        for event in events[1:11]:
            await writer.append(event)
        restarted = TenantCollector(store.follow_tenant(tenant, after=cursor))
        try:
            assert await restarted.wait_for(10), "writes made while it was down were lost"
            await writer.append(events[11])
            assert await restarted.wait_for(11)
        finally:
            await restarted.stop()
        assert [e.event_id for e in restarted.events] == [e.event_id for e in events[1:12]]

    async def test_a_foreign_cursor_is_a_usage_error(self, store: RunStateStore) -> None:
        for bad in ["not-a-cursor", "-1", "1.2.3", "x" * 500, "\x00"]:
            stream = store.follow_tenant(new_id("tenant"), after=bad)
            with pytest.raises(UsageError):
                await anext(stream)


def _not_marker(event: Event) -> bool:
    return event.event_type != "RunMarker"
