"""Budgets on a real PostgreSQL: a crossing is recorded while the run that crossed is still
going (at the step's end, not the run's), once even when two processes notice it, and a
``block`` budget refuses new starts while the running run goes on to finish."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

import pytest

from dvt_engine.admission import BudgetCrossing, LimitsPatch
from dvt_engine.builder import PlanBuilder
from dvt_engine.client import Client
from dvt_engine.cost import BudgetWatch, PriceTable
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.errors import QuotaExceeded
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunStatus
from dvt_engine.models.signals import Actor, Role
from dvt_engine.ports import TENANT_LOG_START, RunStateStore
from dvt_statestore_pg.admission import PostgresAdmissionStore
from dvt_statestore_pg.store import PostgresRunStateStore

# 1 unit for the run and 2 for step a: 3 units, the whole budget, before the gate. The run then
# waits at the gate (RUNNING) until approved; step b is another unit after it.
GATED = (PlanBuilder("budgeted", "1").step("a", "noop", cost_units=2)
         .approval("gate", depends_on=["a"])
         .step("b", "noop", cost_units=1, depends_on=["gate"]).build())
BLOCK = LimitsPatch.parse({"monthlyBudgetUnits": 3, "budgetPolicy": "block"})


async def step_end(store: RunStateStore, tenant: str, run_id: str, step_id: str) -> Event:
    """The committed StepCompleted of a step (from the tenant's stream)."""
    async with asyncio.timeout(60):
        async for item in store.follow_tenant(tenant, after=TENANT_LOG_START):
            event = item.event
            if event.run_id == run_id and event.step_id == step_id \
                    and event.event_type == "StepCompleted":
                return event
    raise AssertionError("unreachable")  # pragma: no cover


async def test_two_processes_record_a_crossing_at_the_step_end_once_and_block_new_starts(
        pg_store_url: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    store = await PostgresRunStateStore.open(pg_store_url)
    # Two admission stores with their own pools: two processes, as far as the database knows.
    first = await PostgresAdmissionStore.open(pg_store_url)
    second = await PostgresAdmissionStore.open(pg_store_url)
    announced: list[tuple[str, int]] = []

    def announcer(name: str):  # type: ignore[no-untyped-def]
        async def announce(crossings: Sequence[BudgetCrossing]) -> None:
            announced.extend((name, c.threshold) for c in crossings)
        return announce

    watches = [BudgetWatch(first, store, PriceTable, announcer("first")),
               BudgetWatch(second, store, PriceTable, announcer("second"))]
    engine = ReferenceEngine(store)
    client = Client(engine=engine, store=store, tenant=tenant, admission=first,
                    actor=Actor(id="host", roles=(Role.ADMIN, Role.APPROVER)))
    try:
        await first.set_limits(tenant, BLOCK)
        handle = await client.start_run(GATED, run_id="crosser")
        ended = await step_end(store, tenant, "crosser", "a")
        for _ in range(3):  # the same event seen again (a redelivery) changes nothing
            for watch in watches:
                watch.saw([ended])
        await asyncio.gather(*(w.settled() for w in watches))
        # Recorded at step a's end, while the run waits at its gate.
        assert await handle.status() == RunStatus.RUNNING
        crossings = await second.crossings(tenant)
        assert [(c.threshold, c.used_units, c.budget_units) for c in crossings] == [
            (80, 3, 3), (100, 3, 3)]
        assert sorted(t for _, t in announced) == [80, 100]  # each announced once, anywhere
        with pytest.raises(QuotaExceeded) as refused:
            await client.start_run(GATED, run_id="refused")
        assert refused.value.details["kind"] == "budget"
        assert await store.get_run(tenant, "refused") is None
        # The running run is not stopped: approved, it finishes (and its units count).
        assert (await handle.approve("gate")).accepted
        assert (await handle.result(timeout=60)).status == RunStatus.COMPLETED
    finally:
        for watch in watches:
            await watch.close()
        await client.close()
        await first.close()
        await second.close()
        await store.close()


class _Heard(logging.Handler):
    """Sets ``done`` when the client logs the crossing of ``threshold``."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold, self.done = threshold, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "budget threshold crossed" \
                and getattr(record, "threshold", None) == self.threshold:
            self.done.set()


async def test_a_library_client_notices_the_crossing_while_its_run_waits(
        pg_store_url: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    store = await PostgresRunStateStore.open(pg_store_url)
    admission = await PostgresAdmissionStore.open(pg_store_url)
    heard = _Heard(100)
    logger = logging.getLogger("dvt_engine.client")
    logger.addHandler(heard)
    try:
        async with await Client.connect(tenant=tenant, store=store, admission=admission,
                                        roles=("admin", "approver")) as client:
            await admission.set_limits(tenant, BLOCK)
            handle = await client.start_run(GATED, run_id="crosser")
            async with asyncio.timeout(60):
                await heard.done.wait()
            assert await handle.status() == RunStatus.RUNNING
            assert [c.threshold for c in await admission.crossings(tenant)] == [80, 100]
            with pytest.raises(QuotaExceeded):
                await client.start_run(GATED, run_id="refused")
            await handle.approve("gate")
            assert (await handle.result(timeout=60)).status == RunStatus.COMPLETED
    finally:
        logger.removeHandler(heard)
        await admission.close()
        await store.close()
