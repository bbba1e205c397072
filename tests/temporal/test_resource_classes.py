"""Plan v1.3 resource classes on a real Temporal server: each class's steps run on the workers
of the class's task queue, an unmapped class on the default queue, and a class limit holds."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from temporal_helpers import TENANT, new_context, plan_doc, put_plan, wait_terminal
from temporalio.testing import WorkflowEnvironment

from dvt_adapters_temporal.engine import TemporalEngine
from dvt_cli.ops import class_queues
from dvt_engine import HandlerRegistry
from dvt_engine.models.run import RunStatus
from dvt_engine.stores.memory import MemoryRunStateStore


def recording_registry(name: str) -> HandlerRegistry:
    """Handlers that answer with the name of the worker host that ran them."""
    registry = HandlerRegistry()

    @registry.handler("whoami")
    async def whoami(ctx: Any) -> dict[str, Any]:
        return {"worker": name}

    return registry


async def test_each_class_runs_on_the_workers_of_its_queue(
    temporal_env: WorkflowEnvironment,
) -> None:
    address = temporal_env.client.service_client.config.target_host
    tag = uuid.uuid4().hex[:8]
    main, routes = f"rc-main-{tag}", {"gpu": f"rc-gpu-{tag}", "cpu": f"rc-cpu-{tag}"}
    store = MemoryRunStateStore()

    def engine(name: str) -> TemporalEngine:
        return TemporalEngine(store, worker=False, registry=recording_registry(name),
                              address=address, task_queue=main, class_queues=routes)

    client_side = engine("client")
    hosts = {name: engine(name) for name in ("main", "gpu", "cpu")}
    # What `dvt worker --resource-class gpu` serves: only the gpu class's queue.
    selected = {"main": [main], "gpu": list(class_queues(hosts["gpu"], ("gpu",))),
                "cpu": list(class_queues(hosts["cpu"], ("cpu",)))}
    stop = asyncio.Event()
    serving = [asyncio.create_task(h.serve_workers(stop=stop, queues=selected[n],
                                                   workflows=n == "main"))
               for n, h in hosts.items()]
    try:
        ref = await put_plan(store, plan_doc([
            {"stepId": "train", "kind": "whoami", "resourceClass": "gpu"},
            {"stepId": "score", "kind": "whoami", "resourceClass": "gpu"},
            {"stepId": "prep", "kind": "whoami", "resourceClass": "cpu"},
            {"stepId": "plain", "kind": "whoami"},
            {"stepId": "unrouted", "kind": "whoami", "resourceClass": "io"},
        ], schemaVersion="v1.3", resourceClasses={"gpu": {"maxParallel": 1}, "cpu": {},
                                                  "io": {}}))
        ctx = new_context()
        await client_side.start_run(ref, ctx)
        snap = await wait_terminal(store, ctx.run_id, within_s=120)
        assert snap.status == RunStatus.COMPLETED
        ran_on = {s.step_id: (s.output or {}).get("worker") for s in snap.steps}
        assert ran_on == {"train": "gpu", "score": "gpu", "prep": "cpu", "plain": "main",
                          "unrouted": "main"}
        events = await store.fetch_events(TENANT, ctx.run_id)
        started = {e.step_id: e.payload.get("resourceClass") for e in events
                   if e.event_type == "StepStarted"}
        assert started == {"train": "gpu", "score": "gpu", "prep": "cpu", "plain": None,
                           "unrouted": "io"}
        # gpu maxParallel 1: score starts only once train settled.
        order = [(e.event_type, e.step_id) for e in events]
        assert order.index(("StepCompleted", "train")) < order.index(("StepStarted", "score"))
    finally:
        stop.set()
        await asyncio.gather(*serving, return_exceptions=True)
        for h in (client_side, *hosts.values()):
            await h.close()
