"""Admission scenarios every engine passes (tests/temporal and tests/conductor run them on the
real servers, with admission and the run store on a real PostgreSQL): exact slots under
concurrent starts, and a queued run started when a slot frees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from dvt_engine.admission import ACTIVE_STATUSES, LimitsPatch
from dvt_engine.builder import PlanBuilder
from dvt_engine.client import Client, RunHandle
from dvt_engine.errors import RateLimited
from dvt_engine.models.run import RunStatus, StepSubstatus
from dvt_engine.models.signals import Actor, Role
from dvt_engine.ports import RunStateStore, WorkflowEngine
from dvt_engine.waiting import wait_for_snapshot
from dvt_statestore_pg.admission import PostgresAdmissionStore

GATED = PlanBuilder("gated", "1").approval("gate").build()
AWAITING = StepSubstatus.AWAITING_APPROVAL
QUICK = PlanBuilder("quick", "1").step("a", "noop").build()
ACTOR = Actor(id="host", roles=(Role.ADMIN, Role.APPROVER))


@asynccontextmanager
async def clients(url: str, store: RunStateStore, engine: WorkflowEngine, tenant: str,
                  n: int) -> AsyncIterator[list[Client]]:
    """``n`` clients of the tenant on one engine, each with its own admission store (its own
    pool: separate processes, as far as the database knows), dispatchers running."""
    async with AsyncExitStack() as stack:
        made = []
        for _ in range(n):
            admission = await PostgresAdmissionStore.open(url, pool_max=8)
            stack.push_async_callback(admission.close)
            client = Client(engine=engine, store=store, tenant=tenant, admission=admission,
                            actor=ACTOR)
            assert client._dispatcher is not None
            client._dispatcher.start()
            stack.push_async_callback(client._dispatcher.stop)
            made.append(client)
        yield made


async def active(store: RunStateStore, tenant: str) -> list[str]:
    """The tenant's runs holding a slot, from the store's latest-status index."""
    return sorted(r.run_id for r in await store.list_runs(tenant, status=ACTIVE_STATUSES,
                                                          limit=1000))


async def exact_slots(url: str, store: RunStateStore, engine: WorkflowEngine, tenant: str,
                      *, starts: int = 24, room: int = 4) -> None:
    """``starts`` concurrent starts from two processes with room for ``room`` make exactly
    ``room`` runs on the engine; the rest are RATE_LIMITED and leave nothing behind."""
    async with clients(url, store, engine, tenant, 2) as (one, two):
        assert one.admission is not None
        await one.admission.set_limits(tenant, LimitsPatch.parse({"maxActiveRuns": room}))
        ids = [f"r-{i:02d}" for i in range(starts)]
        got = await asyncio.gather(*((one, two)[i % 2].start_run(GATED, run_id=run_id)
                                     for i, run_id in enumerate(ids)), return_exceptions=True)
        started = sorted(h.run_id for h in got if isinstance(h, RunHandle))
        refused = [g for g in got if isinstance(g, RateLimited)]
        assert len(started) == room, got
        assert len(refused) == starts - room
        assert all(r.details["kind"] == "activeRuns" for r in refused)
        every = await store.list_runs(tenant, limit=1000)
        assert sorted(r.run_id for r in every) == started
        assert await active(store, tenant) == started
        for run_id in started:  # each is a real run on the engine: it waits at its gate
            assert await one.get_run(run_id).status() in (RunStatus.PENDING, RunStatus.RUNNING)
        for run_id in started:
            assert (await one.get_run(run_id).cancel()).accepted
        for run_id in started:
            snapshot = await one.get_run(run_id).result(timeout=120)
            assert snapshot.status == RunStatus.CANCELLED


async def queued_start_when_a_slot_frees(url: str, store: RunStateStore,
                                         engine: WorkflowEngine, tenant: str) -> None:
    """With one slot and overflow ``queue``: two starts queue behind a gated run and start,
    in order, once it ends; the queue is empty afterwards."""
    async with clients(url, store, engine, tenant, 2) as (one, two):
        assert one.admission is not None
        await one.admission.set_limits(tenant, LimitsPatch.parse(
            {"maxActiveRuns": 1, "overflow": "queue"}))
        blocker = await one.start_run(GATED, run_id="blocker")
        waiting = [await (one, two)[i].start_run(QUICK, run_id=f"w-{i}") for i in range(2)]
        assert [await h.status() for h in waiting] == [RunStatus.QUEUED] * 2
        assert await store.get_run(tenant, "w-0") is None  # not registered while queued
        # Approve once the gate waits for it (on a durable engine the run's first moves take a
        # moment; an approval before that is refused, STEP_NOT_AWAITING_APPROVAL).
        await wait_for_snapshot(store, tenant, "blocker",
                                lambda s: s.step("gate").substatus == AWAITING)
        assert (await blocker.approve("gate")).accepted
        assert (await blocker.result(timeout=120)).status == RunStatus.COMPLETED
        finished = [await one.get_run(f"w-{i}").result(timeout=120) for i in range(2)]
        assert [s.status for s in finished] == [RunStatus.COMPLETED] * 2
        headers = [await store.get_run(tenant, f"w-{i}") for i in range(2)]
        assert headers[0] is not None
        assert headers[1] is not None
        assert headers[0].created_at <= headers[1].created_at
        assert tenant not in await one.admission.queue_depths()
