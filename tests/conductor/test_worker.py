"""The worker host: graceful shutdown drains running steps; a new host picks the run up."""

from __future__ import annotations

import hashlib
import json
import uuid

from conductor_helpers import make_engine

from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunContext, RunStatus
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.waiting import wait_for_snapshot, wait_for_terminal

TENANT = "acme"


async def put_plan(store: MemoryRunStateStore) -> PlanRef:
    """A two-step plan whose first step runs long enough to be caught running."""
    doc = {"metadata": {"planId": "drain", "planVersion": "1", "schemaVersion": "v1.2"},
           "steps": [{"stepId": "slow", "kind": "sleep", "params": {"ms": 1500}},
                     {"stepId": "next", "kind": "noop", "dependsOn": ["slow"]}]}
    data = json.dumps(doc).encode()
    uri = await store.put_plan(data)
    return PlanRef(uri=uri, sha256=hashlib.sha256(data).hexdigest(), schema_version="v1.2",
                   plan_id="drain", plan_version="1")


async def test_stopping_a_worker_host_lets_the_running_step_finish(conductor_url: str) -> None:
    """stop() drains: the running step is recorded, nothing new is taken, a new host resumes."""
    store = MemoryRunStateStore()
    engine = make_engine(conductor_url, store, worker=False)
    try:
        await engine.coordinator()
        host = await engine.worker_host().start()
        ctx = RunContext(tenant_id=TENANT, project_id="p", environment_id="e",
                         run_id=f"drain-{uuid.uuid4().hex[:8]}")
        await engine.start_run(await put_plan(store), ctx)
        await wait_for_snapshot(store, TENANT, ctx.run_id,
                                lambda s: s.step("slow").status == "RUNNING", timeout=60)
        await host.stop(drain_timeout_s=30)
        # stop() returned only after the running step finished and was recorded ...
        snap = await store.get_snapshot(TENANT, ctx.run_id)
        assert snap is not None
        assert snap.step("slow").status == "SUCCESS"
        # ... and the host polled nothing new after it was asked to stop.
        assert snap.step("next").status == "PENDING"
        second = await engine.worker_host().start()
        try:
            final = await wait_for_terminal(store, TENANT, ctx.run_id, timeout=60)
        finally:
            await second.stop()
    finally:
        await engine.close()
    assert final.status == RunStatus.COMPLETED
