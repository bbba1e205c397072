"""Plan v1.3 resource classes on a real Conductor server: a routed class's steps are tasks of
their own type, run by the host serving that class (`dvt worker --resource-class`), the other
steps by a host without the route; a class limit holds."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

from conductor_helpers import TEST_LEASE_S, fast_worker_options

from dvt_adapters_conductor.engine import ConductorEngine
from dvt_cli.ops import class_queues
from dvt_engine import HandlerRegistry
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import ConductorRunRef, RunContext, RunStatus
from dvt_engine.settings import ConductorSettings
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.waiting import wait_for_terminal

TENANT = "acme"


def recording_registry(name: str) -> HandlerRegistry:
    """Handlers that answer with the name of the worker host that ran them."""
    registry = HandlerRegistry()

    @registry.handler("whoami")
    async def whoami(ctx: Any) -> dict[str, Any]:
        return {"worker": name}

    return registry


async def test_each_class_runs_on_the_host_that_serves_it(conductor_url: str) -> None:
    store = MemoryRunStateStore()
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def engine(name: str, *, routed: bool, worker: bool) -> ConductorEngine:
        settings = ConductorSettings(url=conductor_url, task_prefix=prefix, lease_s=TEST_LEASE_S,
                                     worker=worker,
                                     class_queues={"gpu": "gpu-q"} if routed else {})
        return ConductorEngine(store, settings=settings, registry=recording_registry(name),
                               worker_options=fast_worker_options())

    client_side = engine("client", routed=True, worker=False)
    plain_host = engine("plain", routed=False, worker=True)
    gpu_host = engine("gpu", routed=True, worker=False)
    stop = asyncio.Event()
    # What `dvt worker --engine conductor --resource-class gpu` serves: the gpu type only.
    serving = asyncio.create_task(gpu_host.serve_workers(
        stop, queues=class_queues(gpu_host, ("gpu",))))
    try:
        await plain_host.coordinator()
        doc = {"metadata": {"planId": "classes", "planVersion": "1", "schemaVersion": "v1.3",
                            "resourceClasses": {"gpu": {"maxParallel": 1}}},
               "steps": [{"stepId": "train-a", "kind": "whoami", "resourceClass": "gpu"},
                         {"stepId": "train-b", "kind": "whoami", "resourceClass": "gpu"},
                         {"stepId": "plain", "kind": "whoami"}]}
        data = json.dumps(doc).encode()
        ref = PlanRef(uri=await store.put_plan(data), sha256=hashlib.sha256(data).hexdigest(),
                      schema_version="v1.3", plan_id="classes", plan_version="1")
        ctx = RunContext(tenant_id=TENANT, project_id="p", environment_id="e",
                         run_id=f"classes-{uuid.uuid4().hex[:8]}")
        run_ref = await client_side.start_run(ref, ctx)
        snap = await wait_for_terminal(store, TENANT, ctx.run_id, timeout=120)
        assert snap.status == RunStatus.COMPLETED
        ran_on = {s.step_id: (s.output or {}).get("worker") for s in snap.steps}
        assert ran_on == {"train-a": "gpu", "train-b": "gpu", "plain": "plain"}
        assert isinstance(run_ref, ConductorRunRef)
        coordinator = await client_side.coordinator()
        workflow = await coordinator.api.run(coordinator.api.get_workflow, run_ref.workflow_id)
        types = {t["inputData"].get("stepId"): t["taskType"] for t in workflow["tasks"]
                 if t["taskType"].startswith(f"{prefix}_step")}
        assert types == {"train-a": f"{prefix}_step_gpu-q", "train-b": f"{prefix}_step_gpu-q",
                         "plain": f"{prefix}_step"}
        events = await store.fetch_events(TENANT, ctx.run_id)
        order = [(e.event_type, e.step_id) for e in events]
        # gpu maxParallel 1: train-b starts only once train-a settled.
        assert order.index(("StepCompleted", "train-a")) < order.index(("StepStarted", "train-b"))
    finally:
        stop.set()
        await asyncio.gather(serving, return_exceptions=True)
        for e in (client_side, plain_host, gpu_host):
            await e.close()
