"""Plan v1.3 custom signals: declaration checks, the CUSTOM signal rules, and waits on the
reference engine through the host API (RunHandle.signal(name, data))."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dvt_engine.client import Client, RunHandle
from dvt_engine.errors import (
    ErrorCode,
    PlanDowngradeUnsupported,
    PlanSignalInvalid,
    SchemaValidationFailed,
    SignalInvalidPayload,
    SignalUnknown,
)
from dvt_engine.models.events import EventType
from dvt_engine.models.run import RunStatus, StepStatus, StepSubstatus
from dvt_engine.models.signals import Actor, ApproveStepPayload, Role
from dvt_engine.planning import validate_plan_document
from dvt_engine.planning.capabilities import ENGINE_CAPABILITIES
from dvt_engine.planning.report import build_validation_report
from dvt_engine.planning.versions import change_schema_version
from dvt_engine.waiting import wait_for_snapshot

SCHEMA = {"type": "object", "required": ["rows"], "additionalProperties": False,
          "properties": {"rows": {"type": "integer", "minimum": 0}}}
OPERATOR = Actor(id="olivia", roles=(Role.OPERATOR,))


def doc(steps: list[dict[str, Any]], signals: dict[str, Any] | None = None,
        version: str = "v1.3") -> dict[str, Any]:
    metadata: dict[str, Any] = {"planId": "p", "planVersion": "1", "schemaVersion": version}
    if signals is not None:
        metadata["signals"] = signals
    return {"metadata": metadata, "steps": steps}


def waiting_plan(*, timeout_ms: int | None = None, on_timeout: str = "fail",
                 roles: list[str] | None = None) -> dict[str, Any]:
    wait: dict[str, Any] = {"name": "file-arrived", "onTimeout": on_timeout}
    if timeout_ms is not None:
        wait["timeoutMs"] = timeout_ms
    decl: dict[str, Any] = {"payload": SCHEMA}
    if roles is not None:
        decl["roles"] = roles
    return doc([
        {"stepId": "ready", "kind": "noop", "waitForSignal": wait},
        {"stepId": "load", "kind": "noop", "dependsOn": ["ready"]},
        {"stepId": "hold", "kind": "approval"},
    ], {"file-arrived": decl})


def report_codes(data: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    report = build_validation_report(
        data, engine="reference", capabilities=ENGINE_CAPABILITIES["reference"],
        known_kinds=())
    return [(i.code, i.severity, i.details.get("rule")) for i in report.issues]


# --- validation ----------------------------------------------------------------------------


def test_a_declared_signal_and_its_wait_validate() -> None:
    plan = validate_plan_document(waiting_plan(timeout_ms=50, on_timeout="skip"))
    wait = plan.step("ready").wait_for_signal
    assert wait is not None
    assert wait.timeout_ms == 50
    assert wait.on_timeout == "skip"
    assert plan.metadata.signals is not None
    assert plan.metadata.signals["file-arrived"].allowed_roles == ("operator",)
    assert report_codes(waiting_plan()) == []


@pytest.mark.parametrize(("change", "rule"), [
    ({"payload": {"type": "objekt"}}, "payload_schema"),
    ({"payload": {"properties": {"a": {"minimum": "zero"}}}}, "payload_schema"),
    ({"payload": {"enum": list(range(5000))}}, "payload_schema"),
])
def test_a_bad_or_oversized_payload_schema_is_refused(change: dict[str, Any], rule: str) -> None:
    data = waiting_plan()
    data["metadata"]["signals"]["file-arrived"] = change
    with pytest.raises(PlanSignalInvalid) as info:
        validate_plan_document(data)
    assert info.value.details["rule"] == rule
    assert info.value.details["path"] == "/metadata/signals/file-arrived/payload"


def test_a_wait_for_an_undeclared_signal_is_refused() -> None:
    data = waiting_plan()
    data["steps"][0]["waitForSignal"]["name"] = "file-landed"
    with pytest.raises(PlanSignalInvalid) as info:
        validate_plan_document(data)
    assert info.value.details["rule"] == "undeclared_signal"
    assert info.value.details["signal"] == "file-landed"
    assert info.value.details["stepId"] == "ready"


def test_a_waiting_step_runs_no_handler_so_its_kind_must_be_noop() -> None:
    data = waiting_plan()
    data["steps"][0]["kind"] = "echo"
    with pytest.raises(PlanSignalInvalid) as info:
        validate_plan_document(data)
    assert info.value.details["rule"] == "wait_kind"


@pytest.mark.parametrize("bad", [
    {"waitForSignal": {"name": "a|b"}},
    {"waitForSignal": {"name": "file-arrived", "onTimeout": "retry"}},
    {"waitForSignal": {"name": "file-arrived", "timeoutMs": 0}},
    {"waitForSignal": {"name": "file-arrived", "extra": 1}},
])
def test_a_malformed_wait_is_a_schema_error(bad: dict[str, Any]) -> None:
    data = waiting_plan()
    data["steps"][0].update(bad)
    with pytest.raises(SchemaValidationFailed):
        validate_plan_document(data)


def test_undeclared_roles_and_unknown_declaration_fields_are_schema_errors() -> None:
    for decl in ({"roles": ["superuser"]}, {"roles": []}, {"payload": SCHEMA, "secret": True}):
        with pytest.raises(SchemaValidationFailed):
            validate_plan_document(doc([{"stepId": "a", "kind": "noop"}], {"s": decl}))


def test_a_declared_signal_no_step_waits_for_is_a_warning() -> None:
    data = doc([{"stepId": "a", "kind": "noop"}], {"orphan": {}})
    assert report_codes(data) == [("PLAN_SIGNAL_INVALID", "warning", "unused_signal")]


def test_v13_fields_in_an_older_plan_are_reported_and_block_a_downgrade() -> None:
    data = waiting_plan()
    data["metadata"]["schemaVersion"] = "v1.2"
    codes = report_codes(data)
    assert ("PLAN_SCHEMA_VERSION_UNSUPPORTED", "warning", None) in codes
    report = build_validation_report(data, engine="reference",
                                     capabilities=ENGINE_CAPABILITIES["reference"], known_kinds=())
    paths = {i.path for i in report.issues if i.code == "PLAN_SCHEMA_VERSION_UNSUPPORTED"}
    assert paths == {"/metadata/signals", "/steps/0/waitForSignal"}
    with pytest.raises(PlanDowngradeUnsupported):
        change_schema_version(waiting_plan(), "v1.2")


# --- signals on the reference engine ---------------------------------------------------------


async def started(c: Client, plan: dict[str, Any], step: str = "ready") -> RunHandle:
    handle = await c.start_run(plan, run_id=f"r-{uuid.uuid4().hex[:8]}")
    await wait_for_snapshot(
        c.store, c.tenant, handle.run_id,
        lambda s: s.step(step).substatus == StepSubstatus.AWAITING_APPROVAL
        and s.step("hold").substatus == StepSubstatus.AWAITING_APPROVAL, timeout=30)
    return handle


async def client() -> Client:
    return await Client.connect(tenant=f"t-{uuid.uuid4().hex[:8]}",
                                roles=["operator", "approver"])


async def test_a_custom_signal_completes_the_wait_with_its_data_as_output() -> None:
    async with await client() as c:
        run = await started(c, waiting_plan())
        decision = await run.signal("file-arrived", {"rows": 42}, signal_id="f-1", actor=OPERATOR)
        assert decision.accepted
        assert not decision.no_op
        snap = await wait_for_snapshot(c.store, c.tenant, run.run_id,
                                       lambda s: s.step("load").status == StepStatus.SUCCESS,
                                       timeout=30)
        assert snap.step("ready").output == {"rows": 42}
        again = await run.signal("file-arrived", {"rows": 7}, signal_id="f-1", actor=OPERATOR)
        assert again.duplicate
        assert again.accepted
        assert again.run_seq == decision.run_seq
        late = await run.signal("file-arrived", {"rows": 7}, signal_id="f-2", actor=OPERATOR)
        assert not late.accepted
        assert late.error_code == ErrorCode.SIGNAL_NOT_AWAITED
        events = await c.store.fetch_events(c.tenant, run.run_id)
        accepted = [e for e in events if e.event_type == EventType.SIGNAL_ACCEPTED]
        assert accepted[0].payload["stepId"] == "ready"
        assert accepted[0].payload["request"] == {"name": "file-arrived", "data": {"rows": 42},
                                                  "stepId": "ready"}
        assert accepted[0].payload["effectiveRole"] == "operator"
        completed = [e for e in events if e.event_type == EventType.STEP_COMPLETED
                     and e.step_id == "ready"]
        assert completed[0].caused_by_signal_id == "f-1"
        rejected = [e for e in events if e.event_type == EventType.SIGNAL_REJECTED]
        assert [e.payload["errorCode"] for e in rejected] == ["SIGNAL_NOT_AWAITED"]
        await run.signal(ApproveStepPayload(step_id="hold", decision="approve"))
        assert (await run.result(timeout=30)).status == RunStatus.COMPLETED


async def test_unknown_names_and_invalid_data_are_raised_and_record_nothing() -> None:
    async with await client() as c:
        run = await started(c, waiting_plan())
        before = await c.store.fetch_events(c.tenant, run.run_id)
        with pytest.raises(SignalUnknown) as unknown:
            await run.signal("file-landed", {"rows": 1}, actor=OPERATOR)
        assert unknown.value.details["declared"] == ["file-arrived"]
        with pytest.raises(SignalInvalidPayload) as invalid:
            await run.signal("file-arrived", {"rows": -1, "extra": "secret-value"},
                             actor=OPERATOR)
        errors = invalid.value.details["errors"]
        assert {e["path"] for e in errors} == {"data", "data/rows"}
        assert "secret-value" not in str(invalid.value.details)
        assert await c.store.fetch_events(c.tenant, run.run_id) == before
        await run.cancel()


async def test_the_plan_roles_decide_who_may_send_it() -> None:
    async with await client() as c:
        run = await started(c, waiting_plan(roles=["engineer"]))
        refused = await run.signal("file-arrived", {"rows": 1}, actor=OPERATOR)
        assert not refused.accepted
        assert refused.error_code == ErrorCode.SIGNAL_UNAUTHORIZED
        assert refused.run_seq is not None  # recorded, like any refusal by the authorizer
        admin = Actor(id="ada", roles=(Role.ADMIN,))
        accepted = await run.signal("file-arrived", {"rows": 1}, actor=admin)
        assert accepted.accepted
        assert accepted.effective_role == Role.ADMIN
        await run.cancel()


async def test_an_approval_does_not_complete_a_signal_wait() -> None:
    async with await client() as c:
        run = await started(c, waiting_plan())
        refused = await run.approve("ready", actor=Actor(id="al", roles=(Role.APPROVER,)))
        assert not refused.accepted
        assert refused.error_code == ErrorCode.STEP_NOT_AWAITING_APPROVAL
        await run.cancel()


async def test_a_wait_that_times_out_fails_with_its_code() -> None:
    async with await client() as c:
        handle = await c.start_run(waiting_plan(timeout_ms=30), run_id="t-fail")
        snap = await wait_for_snapshot(c.store, c.tenant, "t-fail",
                                       lambda s: s.status.is_terminal, timeout=30)
        assert snap.status == RunStatus.FAILED
        error = snap.step("ready").error
        assert error is not None
        assert error.code == ErrorCode.SIGNAL_WAIT_TIMEOUT
        assert error.message == "no signal 'file-arrived' within 30 ms"
        late = await handle.signal("file-arrived", {"rows": 1}, actor=OPERATOR)
        assert late.error_code == ErrorCode.RUN_TERMINAL


# --- how the CLI prints them ---------------------------------------------------------------


async def test_event_lines_name_the_signal_a_step_waits_for_and_the_one_decided() -> None:
    from dvt_cli.output import describe_event

    async with await client() as c:
        run = await started(c, waiting_plan())
        await run.signal("file-arrived", {"rows": 1}, actor=OPERATOR)
        await run.approve("hold", actor=Actor(id="al", roles=(Role.APPROVER,)))
        await run.result(timeout=30)
        events = await c.store.fetch_events(c.tenant, run.run_id)
    lines = [describe_event(e) for e in events]
    waits = {e.step_id: line for e, line in zip(events, lines, strict=True)
             if e.event_type == "StepAwaitingApproval"}
    assert f"ready: StepAwaitingApproval (send with: dvt signal {run.run_id} file-arrived " \
        "--payload JSON)" in waits["ready"]
    assert f"hold: StepAwaitingApproval (approve with: dvt signal {run.run_id} approve hold)" \
        in waits["hold"]
    decisions = [line.split(": ", 1)[1] for e, line in zip(events, lines, strict=True)
                 if e.event_type == "SignalAccepted"]
    assert decisions == ["SignalAccepted CUSTOM file-arrived by olivia",
                         "SignalAccepted APPROVE_STEP by al"]
