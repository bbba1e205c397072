"""Admission on a real PostgreSQL with the reference engine: exact slots under concurrent
starts, the durable FIFO queue (also across a restart of every process), random interleavings
of starts, completions and cancels."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvt_engine.admission import ACTIVE_STATUSES, LimitsPatch
from dvt_engine.builder import PlanBuilder
from dvt_engine.client import Client, RunHandle
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.errors import RateLimited, RunNotFound
from dvt_engine.eventlog import EventFactory
from dvt_engine.models.run import RunStatus
from dvt_engine.models.signals import Actor, Role
from dvt_engine.ports import TENANT_LOG_START
from dvt_engine.waiting import wait_for_snapshot
from dvt_statestore_pg.admission import PostgresAdmissionStore
from dvt_statestore_pg.store import PostgresRunStateStore

GATED = PlanBuilder("gated", "1").approval("gate").build()


@asynccontextmanager
async def opened(url: str, tenant: str) -> AsyncIterator[Client]:
    """A client with its own store, admission store and engine: one process, as far as the
    database knows."""
    store = await PostgresRunStateStore.open(url)
    admission = await PostgresAdmissionStore.open(url, pool_max=8)
    engine = ReferenceEngine(store)
    client = Client(engine=engine, store=store, tenant=tenant, admission=admission,
                    actor=Actor(id="host", roles=(Role.ADMIN, Role.APPROVER)))
    assert client._dispatcher is not None
    client._dispatcher.start()
    try:
        yield client
    finally:
        await client.close()
        await admission.close()
        await store.close()


async def set_limits(client: Client, **limits: Any) -> None:
    assert client.admission is not None
    await client.admission.set_limits(client.tenant, LimitsPatch.parse(limits))


async def active(client: Client) -> list[str]:
    rows = await client.store.list_runs(client.tenant, status=ACTIVE_STATUSES, limit=10_000)
    return [r.run_id for r in rows]


async def wait_running(handle: RunHandle) -> None:
    """Wait, on the tenant's event stream, until the run (maybe queued now) has started."""
    client = handle.client
    async with asyncio.timeout(60):
        async for item in client.store.follow_tenant(client.tenant, after=TENANT_LOG_START):
            if item.event.run_id == handle.run_id and item.event.event_type == "RunStarted":
                break
    await wait_for_snapshot(client.store, client.tenant, handle.run_id,
                            lambda s: s.status == RunStatus.RUNNING)


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_200_concurrent_starts_with_room_for_10_create_exactly_10_runs(
        pg_store_url: str) -> None:
    async with opened(pg_store_url, tenant()) as client:
        await set_limits(client, maxActiveRuns=10)
        ids = [f"r-{i:03d}" for i in range(200)]
        got = await asyncio.gather(*(client.start_run(GATED, run_id=i) for i in ids),
                                   return_exceptions=True)
        started = [i for i, g in zip(ids, got, strict=True) if isinstance(g, RunHandle)]
        refused = [g for g in got if isinstance(g, RateLimited)]
        assert len(started) == 10
        assert len(refused) == 190
        assert all(r.details["kind"] == "activeRuns" and r.details["retryAfterS"] >= 1
                   for r in refused)
        assert sorted(await active(client)) == sorted(started)
        every = await client.store.list_runs(client.tenant, limit=1000)
        assert sorted(r.run_id for r in every) == sorted(started)


async def test_queue_mode_accepts_the_rest_and_starts_them_in_order_as_slots_free(
        pg_store_url: str) -> None:
    async with opened(pg_store_url, tenant()) as client:
        await set_limits(client, maxActiveRuns=10, overflow="queue")
        ids = [f"q-{i:03d}" for i in range(200)]
        handles = await asyncio.gather(*(client.start_run(GATED, run_id=i) for i in ids))
        statuses = await asyncio.gather(*(h.status() for h in handles))
        queued = [h.run_id for h, s in zip(handles, statuses, strict=True)
                  if s == RunStatus.QUEUED]
        running = [h for h, s in zip(handles, statuses, strict=True) if s != RunStatus.QUEUED]
        assert len(queued) == 190
        assert len(running) == 10
        assert client.admission is not None
        assert (await client.admission.queue_depths())[client.tenant] == 190
        # A repeated start of a queued run is the same queued run, not a second one.
        again = await client.start_run(GATED, run_id=queued[0])
        assert await again.status() == RunStatus.QUEUED
        assert (await client.admission.queue_depths())[client.tenant] == 190
        # The queue's order is admission order; free slots one by one: each next start is the
        # queue's head.
        rows = [await client.admission.queued_run(client.tenant, q) for q in queued]
        order = [r.run_id for r in sorted(rows, key=lambda r: r.seq)]  # type: ignore[union-attr]
        for h in running:
            await wait_running(h)
        first = running[0]
        await first.cancel()
        await wait_running(client.get_run(order[0]))
        assert len(await active(client)) == 10
        await (client.get_run(order[0])).cancel()
        await wait_running(client.get_run(order[1]))
        assert await client.get_run(order[2]).status() == RunStatus.QUEUED
        # A queued run can be cancelled; it never starts.
        assert (await client.get_run(order[2]).cancel()).accepted
        assert await client.get_run(order[2]).status() == RunStatus.CANCELLED
        await client.get_run(order[1]).cancel()
        await wait_running(client.get_run(order[3]))
        assert await client.store.get_run(client.tenant, order[2]) is None
        assert len(await active(client)) == 10


async def test_queued_runs_drain_in_order_after_every_process_restarted(
        pg_store_url: str) -> None:
    name = tenant()
    async with opened(pg_store_url, name) as first:
        await set_limits(first, maxActiveRuns=1, overflow="queue")
        blocker = await first.start_run(GATED, run_id="blocker")
        await wait_running(blocker)
        for i in range(5):
            handle = await first.start_run(PlanBuilder("quick", "1").step("a", "noop").build(),
                                           run_id=f"w-{i}")
            assert await handle.status() == RunStatus.QUEUED
    # Every process is gone; a new one finds the queue in the database. The blocker's engine
    # went with its process: an operator ends it in the log, and the store frees its slot.
    async with opened(pg_store_url, name) as second:
        header = await second.store.get_run(name, "blocker")
        assert header is not None
        await second.store.append(EventFactory(header, emitted_by="operator").run_event(
            "RunCancelled", {"reason": "engine gone"}))
        results = [await second.get_run(f"w-{i}").result(timeout=60) for i in range(5)]
        assert [r.status for r in results] == [RunStatus.COMPLETED] * 5
        headers = [await second.store.get_run(name, f"w-{i}") for i in range(5)]
        created = [h.created_at for h in headers if h is not None]
        assert len(created) == 5
        assert created == sorted(created)
        assert second.admission is not None
        assert name not in await second.admission.queue_depths()


async def test_limit_changes_apply_without_restart_and_rates_refuse_with_retry_after(
        pg_store_url: str) -> None:
    async with opened(pg_store_url, tenant()) as client:
        await set_limits(client, runStartsPerMinute=2)
        quick = PlanBuilder("quick", "1").step("a", "noop").build()
        await client.start_run(quick, run_id="a")
        await client.start_run(quick, run_id="b")
        with pytest.raises(RateLimited) as refused:
            await client.start_run(quick, run_id="c")
        assert refused.value.details["kind"] == "runStartsPerMinute"
        assert 1 <= refused.value.details["retryAfterS"] <= 30
        assert await client.store.get_run(client.tenant, "c") is None
        await set_limits(client, runStartsPerMinute=1000)
        await client.start_run(quick, run_id="c")
        assert await client.store.get_run(client.tenant, "c") is not None


OPS = st.lists(st.sampled_from(["start", "start", "start", "approve", "cancel", "cancel_q"]),
               min_size=5, max_size=30)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=st.lists(OPS, min_size=1, max_size=4), queue=st.booleans(),
       limit=st.integers(min_value=1, max_value=4))
def test_random_interleavings_never_hold_more_active_runs_than_the_limit(
        pg_store_url: str, batches: list[list[str]], queue: bool, limit: int) -> None:
    asyncio.run(_interleave(pg_store_url, batches, queue, limit))


async def _interleave(url: str, batches: list[list[str]], queue: bool, limit: int) -> None:
    async with opened(url, tenant()) as client:
        await set_limits(client, maxActiveRuns=limit, overflow="queue" if queue else "reject")
        made: list[str] = []
        seen_max = 0

        async def op(kind: str, n: int) -> None:
            if kind == "start":
                run_id = f"h-{len(made)}-{n}"
                made.append(run_id)
                with contextlib.suppress(RateLimited):
                    await client.start_run(GATED, run_id=run_id)
                return
            current = await active(client)
            # A run registered a moment ago may not be on the engine yet: RUN_NOT_FOUND.
            with contextlib.suppress(RunNotFound):
                if kind == "approve" and current:
                    await client.get_run(current[-1]).approve("gate")
                elif kind == "cancel" and current:
                    await client.get_run(current[0]).cancel()
                elif kind == "cancel_q" and made:
                    target = made[n % len(made)]
                    assert client.admission is not None
                    row = await client.admission.queued_run(client.tenant, target)
                    if row is not None and row.state == "QUEUED":
                        await client.get_run(target).cancel()

        for batch in batches:
            done = asyncio.Event()

            async def watch(done: asyncio.Event = done) -> None:
                nonlocal seen_max
                while not done.is_set():
                    seen_max = max(seen_max, len(await active(client)))
                    await asyncio.sleep(0)

            async with asyncio.TaskGroup() as group:
                watcher = group.create_task(watch())
                async with asyncio.TaskGroup() as ops:
                    for n, kind in enumerate(batch):
                        ops.create_task(op(kind, n))
                done.set()
                await watcher
            seen_max = max(seen_max, len(await active(client)))
            assert seen_max <= limit
        assert seen_max <= limit
        assert seen_max <= limit
