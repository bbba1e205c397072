"""Plan v1.3 on Temporal beyond the golden scenarios: outputs a condition reads survive
continue-as-new, and limits hold when every step starts a new workflow run."""

from __future__ import annotations

import uuid

from temporal_helpers import new_context, plan_doc, put_plan, wait_terminal
from temporalio.testing import WorkflowEnvironment

from dvt_adapters_temporal.engine import TemporalEngine
from dvt_adapters_temporal.replay import fetch_chain
from dvt_engine.models.run import RunStatus, StepStatus, TemporalRunRef
from dvt_engine.stores.memory import MemoryRunStateStore


async def test_a_condition_reads_an_output_from_an_earlier_workflow_run(
    temporal_env: WorkflowEnvironment,
) -> None:
    engine = TemporalEngine(MemoryRunStateStore(),
                            address=temporal_env.client.service_client.config.target_host,
                            task_queue=f"v13-{uuid.uuid4().hex[:8]}",
                            continue_as_new_after_steps=1)
    try:
        ref = await put_plan(engine.store, plan_doc([
            {"stepId": "extract", "kind": "echo", "params": {"rows": 3}},
            {"stepId": "mid", "kind": "noop", "dependsOn": ["extract"]},
            {"stepId": "after", "kind": "noop", "dependsOn": ["mid"]},
            {"stepId": "load", "kind": "noop", "dependsOn": ["after", "extract"],
             "when": "steps.extract.output.rows > 2"},
            {"stepId": "bulk", "kind": "noop", "dependsOn": ["after", "extract"],
             "when": "steps.extract.output.rows > 5"},
        ], planId="v13-can", schemaVersion="v1.3", maxParallel=1))
        ctx = new_context()
        run_ref = await engine.start_run(ref, ctx)
        assert isinstance(run_ref, TemporalRunRef)
        snap = await wait_terminal(engine.store, ctx.run_id, within_s=120)
        assert snap.status == RunStatus.COMPLETED
        assert snap.step("load").status == StepStatus.SUCCESS
        bulk = snap.step("bulk")
        assert bulk.status == StepStatus.SKIPPED
        assert bulk.skip_reason == "condition false: steps.extract.output.rows > 5"
        chain = await fetch_chain(await engine.client(), run_ref.workflow_id)
        assert len(chain["runs"]) >= 3  # extract's output crossed continue-as-new
    finally:
        await engine.close()


async def test_a_for_each_expansion_survives_continue_as_new(
    temporal_env: WorkflowEnvironment,
) -> None:
    engine = TemporalEngine(MemoryRunStateStore(),
                            address=temporal_env.client.service_client.config.target_host,
                            task_queue=f"v13-{uuid.uuid4().hex[:8]}",
                            continue_as_new_after_steps=1)
    try:
        ref = await put_plan(engine.store, plan_doc([
            {"stepId": "list", "kind": "echo", "params": {"xs": ["a", "b", "c"]}},
            {"stepId": "each", "kind": "echo", "dependsOn": ["list"],
             "forEach": {"step": "list", "path": "xs", "maxItems": 3}},
            {"stepId": "sink", "kind": "noop", "dependsOn": ["each"],
             "when": "steps.each.output[2].item == 'c'"},
        ], planId="v13-can-foreach", schemaVersion="v1.3", maxParallel=1))
        ctx = new_context()
        run_ref = await engine.start_run(ref, ctx)
        assert isinstance(run_ref, TemporalRunRef)
        snap = await wait_terminal(engine.store, ctx.run_id, within_s=120)
        assert snap.status == RunStatus.COMPLETED
        assert [s.step_id for s in snap.steps] == ["list", "each", "each[0]", "each[1]",
                                                   "each[2]", "sink"]
        assert snap.step("each").output == [{"item": x, "index": i}
                                            for i, x in enumerate("abc")]
        assert snap.step("sink").status == StepStatus.SUCCESS
        chain = await fetch_chain(await engine.client(), run_ref.workflow_id)
        assert len(chain["runs"]) >= 3  # the expansion crossed continue-as-new
    finally:
        await engine.close()
