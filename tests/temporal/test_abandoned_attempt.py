"""An attempt the engine lost (worker shutting down, heartbeat timeout) records nothing."""

from __future__ import annotations

import asyncio

import pytest

from dvt_engine.eventlog import EventFactory, RunWriter, utc_now
from dvt_engine.idempotency import run_request_key
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.run import RunContext, RunHeader
from dvt_engine.steps.context import CancelToken
from dvt_engine.steps.runner import StepInvocation, StepRunner
from dvt_engine.stores.memory import MemoryRunStateStore

PLAN = ExecutionPlan.model_validate({
    "metadata": {"planId": "abandon", "planVersion": "1", "schemaVersion": "v1.2"},
    "steps": [{"stepId": "slow", "kind": "sleep", "params": {"ms": 60000}}],
})


async def _running_step(abandon: bool) -> list[str]:
    store = MemoryRunStateStore()
    ctx = RunContext(tenant_id="t", project_id="p", environment_id="e", run_id=f"r-{abandon}")
    ref = PlanRef(uri="plan://sha256/" + "0" * 64, sha256="0" * 64, schema_version="v1.2",
                  plan_id="abandon", plan_version="1")
    header = RunHeader.for_plan(plan=PLAN, plan_ref=ref, context=ctx, engine="temporal",
                                run_request_key=run_request_key("t", "p", "e", "abandon", "1",
                                                                ctx.run_id),
                                created_at=utc_now())
    await store.register_run(header)
    await RunWriter(store, header).append(
        EventFactory(header, "engine").run_event("RunStarted", {"engine": "temporal"}))
    token = CancelToken()
    inv = StepInvocation.for_step(header, PLAN.steps[0])
    task = asyncio.ensure_future(StepRunner(store).run(inv, cancel=token))

    async def step_started() -> None:
        async for event in store.follow("t", ctx.run_id, after_seq=1):
            if event.event_type == "StepStarted":
                return

    await asyncio.wait_for(step_started(), 30)
    if abandon:
        token.abandon()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return [e.event_type for e in await store.fetch_events("t", ctx.run_id)]


async def test_abandoned_attempt_records_nothing() -> None:
    assert await _running_step(abandon=True) == ["RunStarted", "StepStarted"]


async def test_cancelled_task_without_abandon_records_the_stop() -> None:
    assert await _running_step(abandon=False) == ["RunStarted", "StepStarted", "StepFailed"]
