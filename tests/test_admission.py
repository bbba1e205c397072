"""Tenant limits: validation of limits, the token bucket, and the memory twin of admission with
the reference engine (the PostgreSQL store's are in tests/pg/test_pg_admission.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dvt_engine.admission import (
    ACTIVE_STATUSES,
    RATE_MEMO_MAX_S,
    Bucket,
    LimitSettings,
    LimitsPatch,
    TenantLimits,
    effective_limits,
)
from dvt_engine.builder import PlanBuilder
from dvt_engine.client import Client, RunHandle
from dvt_engine.cost import BudgetWatch, PriceTable
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.errors import ErrorCode, LimitsInvalid, QuotaExceeded, RateLimited, UsageError
from dvt_engine.models.run import RunStatus, StepSubstatus
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_admission import MemoryAdmissionStore
from dvt_engine.waiting import wait_for_snapshot

GATED = PlanBuilder("gated", "1").approval("gate").build()
QUICK = PlanBuilder("quick", "1").step("a", "noop").build()


@pytest.mark.parametrize("field", ["maxActiveRuns", "runStartsPerMinute", "signalsPerMinute",
                                   "maxPlanSteps", "maxPlanBytes", "maxQueuedRuns"])
@pytest.mark.parametrize("value", [-1, 0, 10**12, "10", "ten", 1.5, 7.0000001, -3.0, 1e300,
                                   float("nan"), True, [], {}])
def test_bad_limit_values_are_refused_with_a_coded_error(field: str, value: Any) -> None:
    with pytest.raises(LimitsInvalid) as refused:
        LimitsPatch.parse({field: value})
    assert refused.value.code is ErrorCode.LIMITS_INVALID
    assert refused.value.details["issues"][0]["path"].startswith(field)


@pytest.mark.parametrize("body", [{"maxActiveRun": 3}, {"overflow": "drop"}, [1], "x",
                                  {"budgetPolicy": "maybe"}])
def test_unknown_fields_and_bad_choices_are_refused(body: Any) -> None:
    with pytest.raises(LimitsInvalid):
        LimitsPatch.parse(body)


def test_a_whole_number_written_with_a_point_is_that_integer() -> None:
    # JSON (and JSON Schema) have one number type: 44.0 is the integer 44.
    patch = LimitsPatch.parse({"maxActiveRuns": 44.0, "maxPlanBytes": 4096.0})
    assert patch.max_active_runs == 44
    assert isinstance(patch.max_active_runs, int)
    assert patch.apply({}) == {"maxActiveRuns": 44, "maxPlanBytes": 4096}


def test_a_patch_replaces_given_fields_and_null_restores_the_default() -> None:
    defaults = TenantLimits()
    stored = LimitsPatch.parse({"maxActiveRuns": 3, "overflow": "queue"}).apply({})
    assert stored == {"maxActiveRuns": 3, "overflow": "queue"}
    stored = LimitsPatch.parse({"maxActiveRuns": None, "maxPlanSteps": 7}).apply(stored)
    assert stored == {"overflow": "queue", "maxPlanSteps": 7}
    limits = effective_limits(defaults, stored)
    assert limits.max_active_runs == defaults.max_active_runs
    assert limits.max_plan_steps == 7
    assert limits.document()["overflow"] == "queue"


def test_settings_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVT_LIMITS_MAX_ACTIVE_RUNS", "7")
    monkeypatch.setenv("DVT_LIMITS_OVERFLOW", "queue")
    limits = LimitSettings().defaults()
    assert limits.max_active_runs == 7
    assert limits.overflow == "queue"
    monkeypatch.setenv("DVT_LIMITS_MAX_ACTIVE_RUNS", "0")
    with pytest.raises((UsageError, ValueError)):
        LimitSettings()


def test_the_bucket_refills_at_the_rate_up_to_one_minute_of_tokens() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    bucket = Bucket(2.0, t0)
    bucket, wait = bucket.take(60, t0)
    assert wait == 0.0
    bucket, wait = bucket.take(60, t0)
    assert wait == 0.0
    bucket, wait = bucket.take(60, t0)
    assert wait == pytest.approx(1.0)
    bucket, wait = bucket.take(60, t0 + timedelta(seconds=1))
    assert wait == 0.0
    full, wait = Bucket(0.0, t0).take(60, t0 + timedelta(hours=1))
    assert wait == 0.0
    assert full.tokens == pytest.approx(59.0)


async def _client(**limits: Any) -> Client:
    store = MemoryRunStateStore()
    admission = MemoryAdmissionStore(store)
    client = await Client.connect(tenant=f"t-{uuid.uuid4().hex[:8]}", store=store,
                                  roles=("admin", "approver"), admission=admission)
    await admission.set_limits(client.tenant, LimitsPatch.parse(limits))
    return client


async def _active(client: Client) -> int:
    return len(await client.store.list_runs(client.tenant, status=ACTIVE_STATUSES))


async def test_memory_twin_admits_exactly_the_room_under_concurrent_starts() -> None:
    async with await _client(maxActiveRuns=5) as client:
        got = await asyncio.gather(*(client.start_run(GATED, run_id=f"r-{i}")
                                     for i in range(50)), return_exceptions=True)
        assert sum(isinstance(g, RunHandle) for g in got) == 5
        assert sum(isinstance(g, RateLimited) for g in got) == 45
        assert await _active(client) == 5
        await client.store.close()


async def test_memory_twin_queues_overflow_and_starts_it_when_a_slot_frees() -> None:
    async with await _client(maxActiveRuns=1, overflow="queue", maxQueuedRuns=2) as client:
        first = await client.start_run(GATED, run_id="first")
        second = await client.start_run(QUICK, run_id="second")
        third = await client.start_run(QUICK, run_id="third")
        assert await second.status() == RunStatus.QUEUED
        with pytest.raises(RateLimited) as full:
            await client.start_run(QUICK, run_id="fourth")
        assert full.value.details["kind"] == "queuedRuns"
        assert (await third.cancel()).accepted
        assert await third.status() == RunStatus.CANCELLED
        await wait_for_snapshot(client.store, client.tenant, "first", lambda s: s.step(
            "gate").substatus == StepSubstatus.AWAITING_APPROVAL)
        decision = await client.get_run("first").approve("gate")
        assert decision.accepted, decision
        assert (await first.result(timeout=30)).status == RunStatus.COMPLETED
        assert (await second.result(timeout=30)).status == RunStatus.COMPLETED
        assert await client.store.get_run(client.tenant, "third") is None
        await client.store.close()


async def test_a_plan_over_the_size_limits_is_refused_with_quota_exceeded() -> None:
    async with await _client(maxPlanSteps=1) as client:
        two = PlanBuilder("two", "1").step("a", "noop").step("b", "noop").build()
        with pytest.raises(QuotaExceeded) as refused:
            await client.start_run(two, run_id="big")
        assert refused.value.details["kind"] == "planSteps"
        assert await client.store.get_run(client.tenant, "big") is None
        await client.store.close()


async def test_signals_over_the_rate_are_refused() -> None:
    async with await _client(signalsPerMinute=1) as client:
        handle = await client.start_run(GATED, run_id="s")
        await handle.pause()
        with pytest.raises(RateLimited) as refused:
            await handle.resume()
        assert refused.value.details["kind"] == "signalsPerMinute"
        await client.store.close()


class _CountingAdmissionFake(MemoryAdmissionStore):
    """A fake that counts the decisions that reach the store."""

    decisions = 0

    async def _admit(self, request: Any) -> Any:
        self.decisions += 1
        return await super()._admit(request)


async def test_a_flood_over_the_start_rate_is_refused_without_asking_the_store() -> None:
    store = MemoryRunStateStore()
    admission = _CountingAdmissionFake(store)
    async with Client(engine=ReferenceEngine(store), store=store, tenant="noisy",
                      admission=admission) as client:
        await admission.set_limits("noisy", LimitsPatch.parse({"runStartsPerMinute": 2}))
        for run_id in ("a", "b"):
            await client.start_run(QUICK, run_id=run_id)
        with pytest.raises(RateLimited) as first:
            await client.start_run(QUICK, run_id="c")
        assert admission.decisions == 3
        for i in range(50):
            with pytest.raises(RateLimited) as again:
                await client.start_run(QUICK, run_id=f"flood-{i}")
            assert again.value.details == {**first.value.details,
                                           "retryAfterS": again.value.details["retryAfterS"]}
            assert 1 <= again.value.details["retryAfterS"] <= first.value.details["retryAfterS"]
        assert admission.decisions == 3  # refused in the process, the store never asked
        assert [r.run_id for r in await store.list_runs("noisy", limit=100)] == ["b", "a"]
        # The memory lasts until the next token is due but at most RATE_MEMO_MAX_S (30 s here).
        until, _ = admission._no_starts["noisy"]
        assert until - time.monotonic() <= RATE_MEMO_MAX_S
        # A raised rate applies at once: the memory goes with the change.
        await admission.set_limits("noisy", LimitsPatch.parse({"runStartsPerMinute": 600}))
        await client.start_run(QUICK, run_id="c")
        assert admission.decisions == 4


async def test_budget_checks_are_coalesced_per_tenant_and_stop_once_the_budget_is_spent(
        ) -> None:
    store = MemoryRunStateStore()
    admission = MemoryAdmissionStore(store)
    announced: list[int] = []
    checks = 0

    async def announce(crossings: Any) -> None:
        announced.extend(c.threshold for c in crossings)

    def prices() -> PriceTable:
        nonlocal checks
        checks += 1
        return PriceTable()

    watch = BudgetWatch(admission, store, prices, announce)
    async with Client(engine=ReferenceEngine(store), store=store, tenant="spender") as client:
        await admission.set_limits("spender", LimitsPatch.parse({"monthlyBudgetUnits": 3}))
        run = await client.start_run(PlanBuilder("p", "1").step("a", "noop", cost_units=2)
                                     .build(), run_id="r")
        await run.result(timeout=30)
        events = await store.fetch_events("spender", "r")
        watch.saw(events * 20)  # many charging events at once: one check, then one more
        await watch.settled()
        assert checks == 1
        assert announced == [80, 100]
        watch.saw(events)  # the whole budget is spent this month: nothing left to check
        await watch.settled()
        assert checks == 1
    await watch.close()
