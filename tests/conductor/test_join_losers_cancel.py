"""``losers: cancel`` on Conductor (plan v1.3): the worker running a loser stops its attempt.

On Conductor the run does not wait for the stopped attempt (the coordinator completes the
loser's task), so the golden scenario alone would not show that the stop reached the worker;
this test does, with a handler that would otherwise sleep for ten minutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

from conductor_helpers import make_engine

from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunContext, RunStatus, StepStatus
from dvt_engine.steps.registry import builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.waiting import wait_for_terminal

TENANT = "acme"


async def test_a_running_loser_is_stopped_by_its_worker(conductor_url: str) -> None:
    slow_running = asyncio.Event()
    stopped: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    registry = builtin_registry()

    @registry.handler("test.slow")
    async def slow(ctx: Any) -> dict[str, Any]:
        slow_running.set()
        try:
            await ctx.sleep(600)
        finally:
            if not stopped.done():
                stopped.set_result(ctx.cancel_token.reason or "")
        return {}

    @registry.handler("test.fast")
    async def fast(ctx: Any) -> dict[str, Any]:
        await slow_running.wait()  # slow's StepStarted is in the log before its handler runs
        return {}

    doc = {"metadata": {"planId": "losers", "planVersion": "1", "schemaVersion": "v1.3"},
           "steps": [
               {"stepId": "start", "kind": "noop"},
               {"stepId": "fast", "kind": "test.fast", "dependsOn": ["start"]},
               {"stepId": "slow", "kind": "test.slow", "dependsOn": ["start"]},
               {"stepId": "first", "kind": "noop", "dependsOn": ["fast", "slow"],
                "join": {"mode": "any", "losers": "cancel"}},
               {"stepId": "after", "kind": "noop", "dependsOn": ["first"]}]}
    store = MemoryRunStateStore()
    data = json.dumps(doc).encode()
    ref = PlanRef(uri=await store.put_plan(data), sha256=hashlib.sha256(data).hexdigest(),
                  schema_version="v1.3", plan_id="losers", plan_version="1")
    engine = make_engine(conductor_url, store, registry=registry)
    ctx = RunContext(tenant_id=TENANT, project_id="p", environment_id="e",
                     run_id=f"losers-{uuid.uuid4().hex[:8]}")
    try:
        await engine.start_run(ref, ctx)
        snap = await wait_for_terminal(store, TENANT, ctx.run_id, timeout=60)
        assert snap.status == RunStatus.COMPLETED
        assert snap.step("slow").status == StepStatus.SKIPPED
        assert snap.step("slow").skip_reason == (
            "join of first already met; cancelled while running")
        # The worker's watcher saw the completed task and stopped the ten-minute sleep.
        reason = await asyncio.wait_for(stopped, timeout=30)
        assert reason == "join of first already met; cancelled while running"
        events = await store.fetch_events(TENANT, ctx.run_id)
        assert [e.event_type for e in events if e.step_id == "slow"] == [
            "StepStarted", "StepSkipped"]
    finally:
        await engine.close()
