"""The step runner: approval gates, secrets and the invocation's wire form."""

from __future__ import annotations

import json
from typing import Any

import pytest
from step_runner_helpers import (
    TENANT,
    invocation,
    make_plan,
    registry_with,
    started_run,
    step_events,
    types_of,
)

from dvt_engine.models.run import RunHeader, StepStatus, StepSubstatus
from dvt_engine.ports import StepContext
from dvt_engine.secrets import MappingSecretsProvider
from dvt_engine.steps import (
    RunnerStepContext,
    StepInvocation,
    StepOutcome,
    StepRunner,
)
from dvt_engine.stores.memory import MemoryRunStateStore


@pytest.fixture
async def store() -> MemoryRunStateStore:
    return MemoryRunStateStore()


# --- approval gates -------------------------------------------------------------------------------


async def _open_gate(store: MemoryRunStateStore, timeout_ms: int | None = 60_000) -> tuple[
        StepRunner, StepInvocation, RunHeader]:
    spec: dict[str, Any] = {"stepId": "g", "kind": "approval"}
    if timeout_ms is not None:
        spec["timeoutMs"] = timeout_ms
    plan = make_plan([spec])
    header = await started_run(store, plan)
    runner = StepRunner(store)
    inv = invocation(header, plan, "g")
    outcome = await runner.run(inv)
    assert (outcome.status, outcome.final) == ("awaiting_approval", False)
    return runner, inv, header


async def test_gate_opens_and_waits(store: MemoryRunStateStore) -> None:
    _, _, header = await _open_gate(store)
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepAwaitingApproval"]
    assert events[1].payload == {"timeoutMs": 60_000}
    snap = await store.get_snapshot(TENANT, header.run_id)
    assert snap is not None
    assert snap.step("g").status == StepStatus.RUNNING
    assert snap.step("g").substatus == StepSubstatus.AWAITING_APPROVAL


async def test_gate_reopened_by_engine_retry_is_a_duplicate(store: MemoryRunStateStore) -> None:
    runner, inv, header = await _open_gate(store, timeout_ms=None)
    again = await runner.run(inv.with_engine_attempt(2))
    assert (again.status, again.duplicate) == ("awaiting_approval", True)
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepAwaitingApproval"]
    assert events[1].payload == {"timeoutMs": None}


async def test_gate_approved(store: MemoryRunStateStore) -> None:
    runner, inv, header = await _open_gate(store)
    outcome = await runner.complete_gate(inv, approve=True, approver="ana", comment="ok",
                                         signal_id="sig-1")
    assert (outcome.status, outcome.final) == ("succeeded", True)
    assert outcome.output == {"approver": "ana", "comment": "ok", "decision": "approve"}
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepAwaitingApproval", "StepCompleted"]
    assert events[-1].caused_by_signal_id == "sig-1"
    assert events[-1].payload["output"] == {"approver": "ana", "comment": "ok",
                                            "decision": "approve"}
    repeat = await runner.complete_gate(inv, approve=True, approver="ana", comment="ok",
                                        signal_id="sig-1")
    assert (repeat.status, repeat.duplicate) == ("succeeded", True)
    assert len(await step_events(store, header)) == 3


async def test_gate_rejected(store: MemoryRunStateStore) -> None:
    runner, inv, header = await _open_gate(store)
    outcome = await runner.complete_gate(inv, approve=False, approver="bo", comment="not today",
                                         signal_id="sig-2")
    assert (outcome.status, outcome.final) == ("failed", True)
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.retryable) == ("APPROVAL_REJECTED", False)
    last = (await step_events(store, header))[-1]
    assert last.event_type == "StepFailed"
    assert last.payload["error"]["code"] == "APPROVAL_REJECTED"
    assert last.payload["error"]["retryable"] is False
    assert last.caused_by_signal_id == "sig-2"


async def test_gate_expired_then_late_approval_is_refused(store: MemoryRunStateStore) -> None:
    runner, inv, header = await _open_gate(store)
    expired = await runner.expire_gate(inv)
    assert expired.error is not None
    assert expired.error.code == "APPROVAL_TIMEOUT"
    assert "60000 ms" in expired.error.message
    late = await runner.complete_gate(inv, approve=True, approver="ana", comment=None,
                                      signal_id="sig-late")
    # The log already decided this attempt: the approval is refused and nothing is added.
    assert late.status == "refused"
    assert late.error is not None
    assert late.error.code == "ILLEGAL_TRANSITION"
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepAwaitingApproval", "StepFailed"]
    assert events[-1].payload["error"]["code"] == "APPROVAL_TIMEOUT"


async def test_open_gate_cancelled(store: MemoryRunStateStore) -> None:
    runner, inv, header = await _open_gate(store)
    outcome = await runner.cancel_step(inv, reason="run cancelled")
    assert outcome.status == "cancelled"
    assert (await step_events(store, header))[-1].payload["error"]["code"] == "STEP_CANCELLED"


# --- secrets --------------------------------------------------------------------------------------

SECRET = "s3cr3t-Value-9f2c"


async def test_secrets_resolve_on_request_and_never_reach_events(
    store: MemoryRunStateStore,
) -> None:
    seen: dict[str, Any] = {}

    async def connect(ctx: StepContext) -> dict[str, Any]:
        assert isinstance(ctx, RunnerStepContext)
        resolved = await ctx.resolve_params()
        seen["resolved"] = resolved
        seen["direct"] = await ctx.secret("vault:db/password")
        seen["params_after"] = json.loads(json.dumps(dict(ctx.params)))
        # A careless handler echoes the secret back: the runner masks it.
        return {"dsn": f"postgres://app:{resolved['db']['password']}@db/app"}

    async def leak_in_error(ctx: StepContext) -> None:
        value = await ctx.secret("vault:db/password")
        raise RuntimeError(f"login failed for password {value}")

    params = {"db": {"user": "app", "password": {"secretRef": "vault:db/password"}},
              "list": [{"secretRef": "vault:db/password"}, "plain"]}
    plan = make_plan([
        {"stepId": "c", "kind": "connect", "params": params},
        {"stepId": "l", "kind": "leak", "params": {}, "retry": {"maxAttempts": 1}},
    ])
    header = await started_run(store, plan)
    runner = StepRunner(store, registry_with(connect=connect, leak=leak_in_error),
                        secrets=MappingSecretsProvider({"vault:db/password": SECRET}))
    ok = await runner.run(invocation(header, plan, "c"))
    failed = await runner.run(invocation(header, plan, "l"))

    assert seen["resolved"] == {"db": {"user": "app", "password": SECRET},
                                "list": [SECRET, "plain"]}
    assert seen["direct"] == SECRET
    assert seen["params_after"] == params  # params still hold the reference, not the value
    assert ok.status == "succeeded"
    assert ok.output == {"dsn": "postgres://app:***@db/app"}
    assert failed.error is not None
    assert SECRET not in failed.error.message
    assert "***" in failed.error.message
    stored = await store.fetch_events(TENANT, header.run_id)
    assert len(stored) == 5
    for event in stored:
        assert SECRET not in event.model_dump_json(), event.event_type
    assert SECRET not in ok.model_dump_json() + failed.model_dump_json()
    snap = await store.get_snapshot(TENANT, header.run_id)
    assert snap is not None
    assert SECRET not in snap.model_dump_json()


async def test_unresolvable_secret_fails_the_step(store: MemoryRunStateStore) -> None:
    async def needs(ctx: StepContext) -> None:
        await ctx.secret("vault:missing")

    plan = make_plan([{"stepId": "n", "kind": "needs", "retry": {"maxAttempts": 3}}])
    header = await started_run(store, plan)
    outcome = await StepRunner(store, registry_with(needs=needs),
                               secrets=MappingSecretsProvider({})).run(
        invocation(header, plan, "n"))
    assert (outcome.status, outcome.final) == ("failed", True)
    assert outcome.error is not None
    assert outcome.error.code == "SECRET_NOT_FOUND"


# --- wire form ------------------------------------------------------------------------------------


async def test_invocation_and_outcome_round_trip_as_json(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "e", "kind": "echo", "params": {"a": [1, 2]},
                       "retry": {"maxAttempts": 2, "nonRetryableErrorCodes": ["X"]},
                       "timeoutMs": 1000, "costHint": {"units": 1}}])
    header = await started_run(store, plan)
    inv = invocation(header, plan, "e", engine_attempt=2)
    wire = inv.model_dump_json()
    assert '"engineAttemptId":2' in wire
    assert '"planParams"' in wire
    back = StepInvocation.model_validate_json(wire)
    assert back == inv
    outcome = await StepRunner(store).run(back)
    assert StepOutcome.model_validate_json(outcome.model_dump_json()) == outcome
    assert StepOutcome.model_validate(json.loads(outcome.model_dump_json())).succeeded
