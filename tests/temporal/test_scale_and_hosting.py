"""Continue-as-new on large plans, step routing to task queues, replay-safe telemetry."""

from __future__ import annotations

import asyncio
import json
import uuid

from google.protobuf import json_format
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporal_helpers import (
    TENANT,
    has_event,
    new_context,
    plan_doc,
    put_plan,
    wait_for,
    wait_terminal,
)
from temporalio.api.history.v1 import History
from temporalio.testing import WorkflowEnvironment

from dvt_adapters_temporal.engine import TemporalEngine
from dvt_adapters_temporal.replay import fetch_chain
from dvt_engine import telemetry
from dvt_engine.models.run import RunStatus, TemporalRunRef
from dvt_engine.stores.memory import MemoryRunStateStore


def engine_on(env: WorkflowEnvironment, **options: object) -> TemporalEngine:
    """An engine with in-process workers and its own task queue."""
    return TemporalEngine(MemoryRunStateStore(),
                          address=env.client.service_client.config.target_host,
                          task_queue=f"t-{uuid.uuid4().hex[:8]}", **options)


async def history_sizes(engine: TemporalEngine, ref: TemporalRunRef) -> list[int]:
    """Byte size of each workflow run's history in the run's continue-as-new chain."""
    client = await engine.client()
    chain = await fetch_chain(client, ref.workflow_id)
    return [json_format.ParseDict(run, History()).ByteSize() for run in chain["runs"]]


async def history_growths(engine: TemporalEngine, ref: TemporalRunRef) -> list[int]:
    """What each workflow run added to its history beyond its input, its copy of the plan and
    the next run's input (the continue-as-new event carries the cursor)."""
    client = await engine.client()
    chain = await fetch_chain(client, ref.workflow_id)
    growths = []
    for run in chain["runs"]:
        history = json_format.ParseDict(run, History())
        # The first local-activity marker is dvt.prepare's result: the plan.
        plan_marker = next(e for e in history.events
                           if e.marker_recorded_event_attributes.marker_name
                           == "core_local_activity")
        last = history.events[-1]
        carried = last.ByteSize() if last.HasField(
            "workflow_execution_continued_as_new_event_attributes") else 0
        growths.append(history.ByteSize() - history.events[0].ByteSize()
                       - plan_marker.ByteSize() - carried)
    return growths


async def test_thousand_step_plan_finishes_with_bounded_histories(
    temporal_env: WorkflowEnvironment,
) -> None:
    # 1,000 steps: 20 independent chains of 50.
    steps = []
    for c in range(20):
        for i in range(50):
            step = {"stepId": f"c{c:02d}-{i:02d}", "kind": "noop"}
            if i:
                step["dependsOn"] = [f"c{c:02d}-{i - 1:02d}"]
            steps.append(step)
    engine = engine_on(temporal_env)
    try:
        ref = await put_plan(engine.store, plan_doc(steps, planId="thousand"))
        ctx = new_context()
        run_ref = await engine.start_run(ref, ctx)
        assert isinstance(run_ref, TemporalRunRef)
        snap = await wait_terminal(engine.store, ctx.run_id, within_s=240)
        assert snap.status == RunStatus.COMPLETED
        assert all(str(s.status) == "SUCCESS" for s in snap.steps)
        sizes = await history_sizes(engine, run_ref)
        # 50 steps per run at most: 1,000 steps need at least 20 runs.
        assert len(sizes) >= 20
        assert max(sizes) < 1_000_000
    finally:
        await engine.close()


async def test_history_size_threshold_continues_as_new(temporal_env: WorkflowEnvironment) -> None:
    limit = 40_000
    engine = engine_on(temporal_env, continue_as_new_after_steps=100_000,
                       continue_as_new_history_bytes=limit)
    try:
        steps = [{"stepId": "s000", "kind": "noop"}]
        steps += [{"stepId": f"s{i:03d}", "kind": "noop", "dependsOn": [f"s{i - 1:03d}"]}
                  for i in range(1, 80)]
        ref = await put_plan(engine.store, plan_doc(steps, planId="by-size"))
        ctx = new_context()
        run_ref = await engine.start_run(ref, ctx)
        assert isinstance(run_ref, TemporalRunRef)
        snap = await wait_terminal(engine.store, ctx.run_id, within_s=120)
        assert snap.status == RunStatus.COMPLETED
        growths = await history_growths(engine, run_ref)
        assert len(growths) > 1  # the size estimate, not the step count, started new runs
        # A run continues as soon as its running step settles: at most one step beyond.
        assert max(growths) < limit * 1.25
    finally:
        await engine.close()


async def test_plan_near_the_size_budget_still_runs_many_steps_per_workflow_run(
    temporal_env: WorkflowEnvironment,
) -> None:
    # The plan's JSON alone exceeds the budget: were it counted, every workflow run after the
    # first would start a single step (150 runs); the budget counts what a run adds.
    limit = 20_000
    engine = engine_on(temporal_env, continue_as_new_after_steps=100_000,
                       continue_as_new_history_bytes=limit)
    try:
        pad = "x" * 200
        steps = [{"stepId": "s000", "kind": "noop", "params": {"pad": pad}}]
        steps += [{"stepId": f"s{i:03d}", "kind": "noop", "params": {"pad": pad},
                   "dependsOn": [f"s{i - 1:03d}"]} for i in range(1, 150)]
        doc = plan_doc(steps, planId="big-plan")
        assert len(json.dumps(doc)) > limit
        ref = await put_plan(engine.store, doc)
        ctx = new_context()
        run_ref = await engine.start_run(ref, ctx)
        assert isinstance(run_ref, TemporalRunRef)
        snap = await wait_terminal(engine.store, ctx.run_id, within_s=240)
        assert snap.status == RunStatus.COMPLETED
        growths = await history_growths(engine, run_ref)
        assert 1 < len(growths) <= 30
        assert max(growths) < limit * 1.25
    finally:
        await engine.close()


async def test_step_kinds_are_routed_to_their_task_queues(
    temporal_env: WorkflowEnvironment,
) -> None:
    echo_queue = f"echo-{uuid.uuid4().hex[:8]}"
    engine = engine_on(temporal_env, kind_queues={"echo": echo_queue})
    try:
        ref = await put_plan(engine.store, plan_doc([
            {"stepId": "a", "kind": "noop"},
            {"stepId": "b", "kind": "echo", "dependsOn": ["a"], "params": {"x": 1}},
        ]))
        ctx = new_context()
        run_ref = await engine.start_run(ref, ctx)
        assert isinstance(run_ref, TemporalRunRef)
        snap = await wait_terminal(engine.store, ctx.run_id)
        assert snap.status == RunStatus.COMPLETED
        client = await engine.client()
        queues = []
        async for event in client.get_workflow_handle(run_ref.workflow_id).fetch_history_events():
            if event.HasField("activity_task_scheduled_event_attributes"):
                attrs = event.activity_task_scheduled_event_attributes
                queues.append((attrs.activity_type.name, attrs.task_queue.name))
        assert ("dvt.run_step", engine.settings.task_queue) in queues
        assert ("dvt.run_step", echo_queue) in queues
    finally:
        await engine.close()


async def test_replaying_workflows_emit_no_telemetry_twice(
    temporal_env: WorkflowEnvironment, spans: InMemorySpanExporter
) -> None:
    # No workflow cache: every workflow task replays the run's history from the start.
    engine = engine_on(temporal_env, max_cached_workflows=0)
    try:
        ref = await put_plan(engine.store, plan_doc([
            {"stepId": "a", "kind": "noop"},
            {"stepId": "b", "kind": "noop", "dependsOn": ["a"]},
            {"stepId": "c", "kind": "noop", "dependsOn": ["a"]},
            {"stepId": "d", "kind": "noop", "dependsOn": ["b", "c"]},
        ]))
        ctx = new_context()
        await engine.start_run(ref, ctx)
        snap = await wait_terminal(engine.store, ctx.run_id)
        assert snap.status == RunStatus.COMPLETED
    finally:
        await engine.close()
    mine = [s for s in spans.get_finished_spans()
            if (s.attributes or {}).get(telemetry.ATTR_RUN_ID) == ctx.run_id]
    step_spans = [s for s in mine if s.name == telemetry.SPAN_STEP]
    assert sorted(str((s.attributes or {})[telemetry.ATTR_STEP_ID]) for s in step_spans) == [
        "a", "b", "c", "d"]
    events = await engine.store.fetch_events(TENANT, ctx.run_id)
    appends = [s for s in mine if s.name == telemetry.SPAN_APPEND]
    assert len(appends) == len(events)


async def test_worker_host_drains_running_steps_on_shutdown(
    temporal_env: WorkflowEnvironment,
) -> None:
    address = temporal_env.client.service_client.config.target_host
    queue = f"host-{uuid.uuid4().hex[:8]}"
    store = MemoryRunStateStore()
    client_side = TemporalEngine(store, worker=False, address=address, task_queue=queue)
    host = TemporalEngine(store, worker=False, address=address, task_queue=queue)
    stop = asyncio.Event()
    serving = asyncio.create_task(host.serve_workers(stop=stop))
    try:
        ref = await put_plan(store, plan_doc([
            {"stepId": "slow", "kind": "sleep", "params": {"ms": 1500}},
            {"stepId": "next", "kind": "noop", "dependsOn": ["slow"]},
        ]))
        ctx = new_context()
        await client_side.start_run(ref, ctx)
        await wait_for(store, ctx.run_id, has_event("StepStarted", "slow"))
        stop.set()  # what SIGTERM does in `dvt worker`
        await asyncio.wait_for(serving, 60)
        # Graceful: the running step finished and was recorded before the host stopped.
        events = await store.fetch_events(TENANT, ctx.run_id)
        assert ("StepCompleted", "slow") in [(e.event_type, e.step_id) for e in events]
        assert not any(e.event_type == "StepFailed" for e in events)
    finally:
        stop.set()
        await asyncio.gather(serving, return_exceptions=True)
        await client_side.close()
        await host.close()
    # A new host picks the run up where it stopped.
    again = TemporalEngine(store, address=address, task_queue=queue)
    try:
        await again.client()
        snap = await wait_terminal(store, ctx.run_id)
        assert snap.status == RunStatus.COMPLETED
    finally:
        await again.close()
