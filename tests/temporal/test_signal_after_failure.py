"""A signal decided on a log that shows a final failure the workflow has not heard of yet.

The step's activity writes StepFailed before its result reaches the workflow. An operator who
reads the log in between and approves a gate decides on a failing run; the workflow must learn
the failure before it applies the approval, or a failFast run starts the gate's dependants
after its failure (the reference engine and Conductor decide on the log itself).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from temporal_helpers import (
    TENANT,
    has_event,
    new_context,
    plan_doc,
    put_plan,
    wait_for,
    wait_terminal,
)
from temporalio.client import WorkflowHandle

from contract_tests.late_failure import failing_beside_a_gate, report_outcome_late
from dvt_adapters_temporal.engine import TemporalEngine
from dvt_engine.models.run import RunStatus, StepStatus, TemporalRunRef
from dvt_engine.models.signals import Actor, Role, SignalRequest, SignalType

APPROVER = Actor(id="op-1", roles=(Role.ADMIN, Role.APPROVER))


async def _signal_taken(handle: WorkflowHandle[Any, Any], *, within_s: float = 30.0) -> None:
    """Wait until a workflow task completed after the workflow's last signal arrived."""
    deadline = time.monotonic() + within_s
    while True:
        events = (await handle.fetch_history()).events
        signalled = [i for i, e in enumerate(events)
                     if e.HasField("workflow_execution_signaled_event_attributes")]
        if signalled and any(e.HasField("workflow_task_completed_event_attributes")
                             for e in events[signalled[-1] + 1:]):
            return
        assert time.monotonic() < deadline, "the workflow never took the signal"
        await asyncio.sleep(0.05)


async def test_an_approval_decided_after_a_logged_failure_starts_nothing(
    engine: TemporalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    released = report_outcome_late(monkeypatch, "bad")
    ref = await put_plan(engine.store, plan_doc(failing_beside_a_gate(),
                                                failurePolicy="failFast"))
    ctx = new_context()
    run_ref = await engine.start_run(ref, ctx)
    assert isinstance(run_ref, TemporalRunRef)
    await wait_for(engine.store, ctx.run_id,
                   lambda s, e: has_event("StepFailed", "bad")(s, e)
                   and has_event("StepAwaitingApproval", "gate")(s, e),
                   what="bad failed while the gate waits")
    decision = await engine.signal(run_ref, SignalRequest(
        signal_id=f"s-{uuid.uuid4()}", type=SignalType.APPROVE_STEP, tenant_id=TENANT,
        run_id=ctx.run_id, payload={"stepId": "gate", "decision": "approve"}, actor=APPROVER))
    assert decision.accepted, decision
    client = await engine.client()
    # The workflow has the approval in hand and has made a decision since: had it applied the
    # approval, the gate's dependant would be starting now.
    await _signal_taken(client.get_workflow_handle(run_ref.workflow_id))
    released.set()

    final = await wait_terminal(engine.store, ctx.run_id)
    assert final.status == RunStatus.FAILED
    assert final.failure is not None
    assert (final.failure.step_id, final.failure.code) == ("bad", "BOOM")
    # The failure reached the workflow first: failFast cancels the waiting gate, and the
    # approval then finds no waiting attempt to act on.
    assert final.step("gate").status == StepStatus.FAILED
    assert final.step("after-gate").status == StepStatus.PENDING
    events = await engine.store.fetch_events(TENANT, ctx.run_id)
    assert not [e for e in events if e.step_id == "after-gate"]
