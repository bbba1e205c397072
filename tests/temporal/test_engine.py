"""The Temporal engine on a real dev server: DAG walking, retries, failures, signals, starts."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from temporal_helpers import (
    TENANT,
    has_event,
    kinds,
    new_context,
    plan_doc,
    put_plan,
    wait_for,
    wait_terminal,
)
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from dvt_adapters_temporal.engine import TemporalEngine
from dvt_engine.models.run import RunStatus, TemporalRunRef
from dvt_engine.models.signals import Actor, Role, SignalRequest, SignalType
from dvt_engine.stores.memory import MemoryRunStateStore

OPERATOR = Actor(id="op-1", roles=(Role.ADMIN, Role.APPROVER))


def sig(run_id: str, type_: SignalType, **payload: object) -> SignalRequest:
    """A signal request from the test operator."""
    return SignalRequest(signal_id=f"s-{uuid.uuid4()}", type=type_, tenant_id=TENANT,
                         run_id=run_id, payload=payload, actor=OPERATOR)


async def test_dag_completes_with_step_events_in_dependency_order(engine: TemporalEngine) -> None:
    doc = plan_doc([
        {"stepId": "extract", "kind": "noop"},
        {"stepId": "left", "kind": "echo", "dependsOn": ["extract"], "params": {"v": 1}},
        {"stepId": "right", "kind": "noop", "dependsOn": ["extract"]},
        {"stepId": "join", "kind": "noop", "dependsOn": ["left", "right"]},
    ])
    ref = await put_plan(engine.store, doc)
    ctx = new_context()
    run_ref = await engine.start_run(ref, ctx)
    assert isinstance(run_ref, TemporalRunRef)
    snap = await wait_terminal(engine.store, ctx.run_id)
    assert snap.status == RunStatus.COMPLETED
    events = await engine.store.fetch_events(TENANT, ctx.run_id)
    seq = kinds(events)
    assert seq[0] == ("RunStarted", None)
    assert seq[-1] == ("RunCompleted", None)
    pos = {k: i for i, k in enumerate(seq)}
    for dep, step in (("extract", "left"), ("extract", "right"), ("left", "join"),
                      ("right", "join")):
        assert pos[("StepCompleted", dep)] < pos[("StepStarted", step)]
    assert {s.step_id: s.output for s in snap.steps}["left"] == {"v": 1}


async def test_start_run_twice_returns_the_same_run(engine: TemporalEngine) -> None:
    ref = await put_plan(engine.store, plan_doc([{"stepId": "a", "kind": "noop"}]))
    ctx = new_context()
    first = await engine.start_run(ref, ctx)
    # Same request id, different runId: still the first run.
    second = await engine.start_run(ref, ctx.model_copy(update={"run_id": str(uuid.uuid4())}))
    assert first == second
    await wait_terminal(engine.store, ctx.run_id)
    third = await engine.start_run(ref, ctx)
    assert third == first
    events = await engine.store.fetch_events(TENANT, ctx.run_id)
    assert [e.event_type for e in events].count("RunStarted") == 1
    client = await engine.client()
    handle = client.get_workflow_handle(first.workflow_id)
    result = await handle.result()
    assert result["status"] == "COMPLETED"
    desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED


async def test_engine_retries_share_one_logical_attempt(engine: TemporalEngine) -> None:
    ref = await put_plan(engine.store, plan_doc([
        {"stepId": "flaky", "kind": "fail", "params": {"failTimes": 2, "code": "FLAKY"},
         "retry": {"maxAttempts": 3, "initialIntervalMs": 10, "maxIntervalMs": 20}},
    ]))
    ctx = new_context()
    await engine.start_run(ref, ctx)
    snap = await wait_terminal(engine.store, ctx.run_id)
    assert snap.status == RunStatus.COMPLETED
    events = await engine.store.fetch_events(TENANT, ctx.run_id)
    step_events = [e for e in events if e.step_id == "flaky"]
    assert [e.event_type for e in step_events] == ["StepStarted", "StepCompleted"]
    assert step_events[-1].engine_attempt_id == 3
    assert {e.logical_attempt_id for e in step_events} == {1}


async def test_final_failure_fails_fast(engine: TemporalEngine) -> None:
    ref = await put_plan(engine.store, plan_doc([
        {"stepId": "bad", "kind": "fail", "params": {"code": "BAD_SQL"},
         "retry": {"maxAttempts": 5, "initialIntervalMs": 10,
                   "nonRetryableErrorCodes": ["BAD_SQL"]}},
        {"stepId": "after", "kind": "noop", "dependsOn": ["bad"]},
    ]))
    ctx = new_context()
    await engine.start_run(ref, ctx)
    snap = await wait_terminal(engine.store, ctx.run_id)
    assert snap.status == RunStatus.FAILED
    assert snap.failure is not None
    assert (snap.failure.step_id, snap.failure.code) == ("bad", "BAD_SQL")
    events = await engine.store.fetch_events(TENANT, ctx.run_id)
    failed = [e for e in events if e.event_type == "StepFailed"]
    assert len(failed) == 1
    assert failed[0].engine_attempt_id == 1  # not retryable: no second engine attempt
    assert not any(e.step_id == "after" for e in events)


async def test_pause_stops_scheduling_until_resume(engine: TemporalEngine) -> None:
    ref = await put_plan(engine.store, plan_doc([
        {"stepId": "gate", "kind": "approval"},
        {"stepId": "next", "kind": "noop", "dependsOn": ["gate"]},
    ]))
    ctx = new_context()
    run_ref = await engine.start_run(ref, ctx)
    await wait_for(engine.store, ctx.run_id, has_event("StepAwaitingApproval", "gate"))
    await engine.signal(run_ref, sig(ctx.run_id, SignalType.PAUSE, reason="maintenance"))
    await wait_for(engine.store, ctx.run_id, has_event("RunPaused"))
    await engine.signal(run_ref, sig(ctx.run_id, SignalType.APPROVE_STEP, stepId="gate",
                                     decision="approve", comment="ok"))
    snap = await wait_for(engine.store, ctx.run_id, has_event("StepCompleted", "gate"))
    status = await engine.get_run_status(run_ref)
    assert status.status == RunStatus.PAUSED
    assert snap.status == RunStatus.PAUSED
    await engine.signal(run_ref, sig(ctx.run_id, SignalType.RESUME))
    snap = await wait_terminal(engine.store, ctx.run_id)
    assert snap.status == RunStatus.COMPLETED
    seq = kinds(await engine.store.fetch_events(TENANT, ctx.run_id))
    assert seq.index(("RunResumed", None)) < seq.index(("StepStarted", "next"))
    assert seq.index(("RunPaused", None)) < seq.index(("StepCompleted", "gate"))


async def test_cancel_stops_a_running_step(engine: TemporalEngine) -> None:
    ref = await put_plan(engine.store, plan_doc([
        {"stepId": "long", "kind": "sleep", "params": {"ms": 600000}},
        {"stepId": "never", "kind": "noop", "dependsOn": ["long"]},
    ]))
    ctx = new_context()
    run_ref = await engine.start_run(ref, ctx)
    await wait_for(engine.store, ctx.run_id, has_event("StepStarted", "long"))
    await engine.signal(run_ref, sig(ctx.run_id, SignalType.CANCEL, reason="stop"))
    snap = await wait_terminal(engine.store, ctx.run_id, within_s=30)
    assert snap.status == RunStatus.CANCELLED
    events = await engine.store.fetch_events(TENANT, ctx.run_id)
    assert not any(e.step_id == "never" for e in events)
    assert events[-1].event_type == "RunCancelled"
    status = await engine.get_run_status(run_ref)
    assert status.status == RunStatus.CANCELLED
    assert status.run_id == ctx.run_id


async def test_rejected_gate_fails_the_run(engine: TemporalEngine) -> None:
    ref = await put_plan(engine.store, plan_doc([{"stepId": "gate", "kind": "approval"}]))
    ctx = new_context()
    run_ref = await engine.start_run(ref, ctx)
    await wait_for(engine.store, ctx.run_id, has_event("StepAwaitingApproval", "gate"))
    q = await engine.query_status(run_ref)
    assert q["running"] == ["gate"]
    await engine.signal(run_ref, sig(ctx.run_id, SignalType.APPROVE_STEP, stepId="gate",
                                     decision="reject"))
    snap = await wait_terminal(engine.store, ctx.run_id)
    assert snap.status == RunStatus.FAILED
    assert snap.failure is not None
    assert snap.failure.code == "APPROVAL_REJECTED"


async def test_runs_carry_ownership_search_attributes(engine: TemporalEngine) -> None:
    ref = await put_plan(engine.store, plan_doc([{"stepId": "a", "kind": "noop"}]))
    ctx = new_context()
    run_ref = await engine.start_run(ref, ctx)
    assert isinstance(run_ref, TemporalRunRef)
    await wait_terminal(engine.store, ctx.run_id)
    client = await engine.client()
    desc = await client.get_workflow_handle(run_ref.workflow_id).describe()
    values = {k.name: v for k, v in desc.typed_search_attributes}
    assert values["tenantId"] == TENANT
    assert values["projectId"] == "proj"
    assert values["environmentId"] == "dev"


async def test_new_runs_take_the_patched_paths(engine: TemporalEngine) -> None:
    from dvt_adapters_temporal.workflow_body import PATCH_SIZE_BUDGET_DEFERS_STEPS

    ref = await put_plan(engine.store, plan_doc([{"stepId": "a", "kind": "noop"}]))
    ctx = new_context()
    run_ref = await engine.start_run(ref, ctx)
    assert isinstance(run_ref, TemporalRunRef)
    client = await engine.client()
    handle = client.get_workflow_handle(run_ref.workflow_id)
    await handle.result()
    history = await handle.fetch_history()
    patches = [
        bytes(p.data).decode()
        for e in history.events if e.HasField("marker_recorded_event_attributes")
        for payloads in e.marker_recorded_event_attributes.details.values()
        for p in payloads.payloads
    ]
    # The marker makes every replay of this run take the new path too.
    assert any(PATCH_SIZE_BUDGET_DEFERS_STEPS in p for p in patches), patches
    assert engine.declared_capabilities() >= {"signal.pause.native", "workflow.continue.as.new",
                                              "query.workflow.state", "replay.full"}


async def test_independent_steps_run_at_the_same_time(
    temporal_env: WorkflowEnvironment, memory_store: MemoryRunStateStore
) -> None:
    from dvt_engine.steps.registry import default_registry

    # Each branch waits until every branch has begun: sequential execution could never pass.
    branches = ("left", "middle", "right")
    arrived: set[str] = set()
    everyone = asyncio.Event()

    async def rendezvous(ctx: Any) -> dict[str, Any]:
        arrived.add(ctx.step_id)
        if arrived >= set(branches):
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 30)
        return {"met": sorted(arrived)}

    registry = default_registry()
    registry.register("test.rendezvous", rendezvous)
    engine = TemporalEngine(memory_store, registry=registry,
                            address=temporal_env.client.service_client.config.target_host,
                            task_queue=f"dvt-test-{uuid.uuid4().hex[:8]}")
    try:
        ref = await put_plan(memory_store, plan_doc([
            {"stepId": "start", "kind": "noop"},
            *({"stepId": b, "kind": "test.rendezvous", "dependsOn": ["start"]} for b in branches),
        ]))
        ctx = new_context()
        await engine.start_run(ref, ctx)
        snap = await wait_terminal(memory_store, ctx.run_id)
    finally:
        await engine.close()
    assert snap.status == RunStatus.COMPLETED
    for b in branches:
        assert snap.step(b).output == {"met": sorted(branches)}


async def test_a_signal_racing_the_end_of_the_run_is_not_an_error(engine: TemporalEngine) -> None:
    from dvt_adapters_temporal.wire import SignalMessage

    ref = await put_plan(engine.store, plan_doc([{"stepId": "a", "kind": "noop"}]))
    ctx = new_context()
    run_ref = await engine.start_run(ref, ctx)
    assert isinstance(run_ref, TemporalRunRef)
    client = await engine.client()
    await client.get_workflow_handle(run_ref.workflow_id).result()
    # Decided while the run was live, delivered after its workflow closed: dropped quietly.
    await engine.deliver(run_ref, SignalMessage(signal_id="late", type="PAUSE"))
    events = await engine.store.fetch_events(TENANT, ctx.run_id)
    assert events[-1].event_type == "RunCompleted"
