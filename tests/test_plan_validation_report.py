"""The validation report: every issue as data, capabilities and fallback, versions, prepare_plan."""

from __future__ import annotations

import json
from typing import Any

import pytest
from plan_validation_helpers import plan_doc, report_for, steps_doc

from dvt_engine.errors import (
    CapabilityNotSupported,
    DvtError,
    ErrorCode,
    PlanSchemaVersionUnsupported,
    SchemaValidationFailed,
    StepKindUnknown,
)
from dvt_engine.models.validation import ValidationReport
from dvt_engine.planning.capabilities import (
    ALL_CAPABILITIES,
    CONDUCTOR_CAPABILITIES,
    EMULATIONS,
    ENGINE_CAPABILITIES,
    SIGNAL_PAUSE_NATIVE,
    TEMPORAL_CAPABILITIES,
    WORKFLOW_CHILD_WORKFLOWS,
    WORKFLOW_FAN_DYNAMIC,
    WORKFLOW_FAN_PARALLEL,
    emulation_for,
)
from dvt_engine.planning.validation import (
    prepare_plan,
    raise_for_report,
    validate_plan_document,
)

# --- the report ---


def test_report_of_a_good_plan_is_ok_and_json() -> None:
    report = report_for(plan_doc())
    assert report.ok
    assert report.errors == ()
    assert report.plan_id == "nightly-marts"
    assert report.capabilities is not None
    assert report.capabilities.resolution == "satisfied"
    again = ValidationReport.model_validate_json(report.model_dump_json())
    assert again == report


def test_report_collects_every_issue_at_once() -> None:
    doc = steps_doc(
        {"stepId": "a", "kind": "mystery", "dependsOn": ["ghost"]},
        {"stepId": "b|c", "kind": "noop"},
        {"stepId": "d", "kind": "noop", "timeoutMs": 0},
        {"stepId": "x", "kind": "also.unknown", "dependsOn": ["y"]},
        {"stepId": "y", "kind": "noop", "dependsOn": ["x"]},
    )
    report = report_for(doc, known_kinds=set())
    codes = [i.code for i in report.errors]
    assert codes.count("SCHEMA_VALIDATION_FAILED") == 1
    assert codes.count("IDENTIFIER_INVALID") == 1
    assert codes.count("PLAN_INVALID") == 2
    assert codes.count("STEP_KIND_UNKNOWN") == 2
    kinds = {i.step_id for i in report.errors if i.code == "STEP_KIND_UNKNOWN"}
    assert kinds == {"a", "x"}
    assert not report.ok
    with pytest.raises(SchemaValidationFailed) as info:
        raise_for_report(report)
    assert info.value.details["errors"][0]["path"] == "/steps/2/timeoutMs"
    assert len(info.value.details["issues"]) == len(report.errors)


def test_report_of_bad_json_has_one_schema_issue() -> None:
    report = report_for(b'{"metadata": ', plan_sha256=None)
    assert [i.code for i in report.issues] == ["SCHEMA_VALIDATION_FAILED"]
    assert report.plan_sha256 is not None
    assert len(report.plan_sha256) == 64
    assert report.capabilities is None


def test_report_of_unknown_version_stops_there() -> None:
    report = report_for({"metadata": {"schemaVersion": "v0.9"}, "steps": []})
    assert [i.code for i in report.issues] == ["PLAN_SCHEMA_VERSION_UNSUPPORTED"]
    with pytest.raises(PlanSchemaVersionUnsupported):
        raise_for_report(report)


def test_unknown_step_kind_raises_step_kind_unknown() -> None:
    doc = steps_doc({"stepId": "a", "kind": "spark.submit"})
    report = report_for(doc, known_kinds=())
    with pytest.raises(StepKindUnknown) as info:
        raise_for_report(report)
    assert info.value.details["stepId"] == "a"
    assert info.value.details["kind"] == "spark.submit"
    assert report_for(doc, known_kinds={"spark.submit"}).ok


def test_builtin_kinds_are_always_known() -> None:
    doc = steps_doc(
        *({"stepId": k, "kind": k} for k in ("noop", "sleep", "echo", "fail", "approval"))
    )
    assert report_for(doc, known_kinds=()).ok


def test_report_accepts_a_plan_model() -> None:
    plan = validate_plan_document(plan_doc())
    report = report_for(plan)
    assert report.ok
    assert report.plan_sha256 is None


# --- capabilities and fallback ---


def test_capabilities_of_section_9() -> None:
    assert {
        "signal.pause.native", "cancel.cooperative", "workflow.fan.parallel",
        "workflow.fan.dynamic", "workflow.child.workflows", "query.workflow.state",
        "replay.full", "workflow.continue.as.new", "signals.rate.limit",
    } == TEMPORAL_CAPABILITIES  # fmt: skip
    assert {
        "signal.pause.emulated", "cancel.forced", "workflow.fan.parallel",
        "query.task.state", "replay.task", "signals.rate.limit",
    } == CONDUCTOR_CAPABILITIES  # fmt: skip
    assert ENGINE_CAPABILITIES["reference"] == ALL_CAPABILITIES
    assert set(EMULATIONS) <= ALL_CAPABILITIES


def test_every_capability_an_engine_lacks_has_an_emulation_or_is_said_not_to() -> None:
    for engine, caps in ENGINE_CAPABILITIES.items():
        for capability in ALL_CAPABILITIES - caps:
            emulation = emulation_for(capability, caps)
            if emulation is not None:
                assert emulation.via is None or emulation.via in caps, (engine, capability)


def needs(capability: str, fallback: str) -> dict[str, Any]:
    return plan_doc(
        requiresCapabilities=[WORKFLOW_FAN_PARALLEL, capability], fallbackBehavior=fallback
    )


def test_reject_refuses_a_missing_capability() -> None:
    report = report_for(needs(WORKFLOW_FAN_DYNAMIC, "reject"), engine="conductor")
    assert not report.ok
    assert report.capabilities is not None
    assert report.capabilities.missing == (WORKFLOW_FAN_DYNAMIC,)
    assert report.capabilities.resolution == "rejected"
    with pytest.raises(CapabilityNotSupported) as info:
        raise_for_report(report)
    assert info.value.details["capability"] == WORKFLOW_FAN_DYNAMIC


def test_emulate_runs_with_the_documented_emulation() -> None:
    report = report_for(needs(SIGNAL_PAUSE_NATIVE, "emulate"), engine="conductor")
    assert report.ok
    assert report.capabilities is not None
    assert report.capabilities.resolution == "emulated"
    (warning,) = report.warnings
    assert warning.code == "CAPABILITY_NOT_SUPPORTED"
    assert warning.details["emulation"] == EMULATIONS[SIGNAL_PAUSE_NATIVE].description
    assert "draining" in warning.message
    raise_for_report(report)  # no error: the plan can run


def test_emulate_without_a_usable_emulation_is_refused() -> None:
    report = report_for(needs("gpu.exotic", "emulate"), engine="temporal")
    assert not report.ok
    assert report.capabilities is not None
    assert report.capabilities.resolution == "rejected"
    assert "not a capability dvt knows" in report.errors[0].message


def test_emulate_needs_the_capability_the_emulation_builds_on() -> None:
    caps = frozenset({WORKFLOW_CHILD_WORKFLOWS})  # no fan.parallel to build dynamic fan on
    doc = plan_doc(requiresCapabilities=[WORKFLOW_FAN_DYNAMIC], fallbackBehavior="emulate")
    assert not report_for(doc, engine="custom", capabilities=caps).ok
    caps = frozenset({WORKFLOW_FAN_PARALLEL})
    assert report_for(doc, engine="custom", capabilities=caps).ok


def test_degrade_runs_and_records_a_warning() -> None:
    report = report_for(needs("gpu.exotic", "degrade"), engine="conductor")
    assert report.ok
    assert report.capabilities is not None
    assert report.capabilities.resolution == "degraded"
    assert [w.details["capability"] for w in report.warnings] == ["gpu.exotic"]


def test_reference_engine_satisfies_every_known_capability() -> None:
    report = report_for(plan_doc(requiresCapabilities=sorted(ALL_CAPABILITIES)), engine="reference")
    assert report.ok
    assert report.capabilities is not None
    assert report.capabilities.resolution == "satisfied"


@pytest.mark.parametrize(
    ("target", "ok"), [("any", True), ("temporal", True), ("conductor", False)]
)
def test_target_adapter(target: str, ok: bool) -> None:
    report = report_for(plan_doc(targetAdapter=target, fallbackBehavior="degrade"))
    assert report.ok is ok
    if not ok:
        assert report.errors[0].code == "CAPABILITY_NOT_SUPPORTED"
        assert report.errors[0].path == "/metadata/targetAdapter"


# --- versions ---


def test_newer_fields_in_an_older_plan_are_honoured_with_a_warning() -> None:
    doc = steps_doc({"stepId": "a", "kind": "noop", "taskQueue": "gpu"}, version="v1.0")
    doc["metadata"]["failurePolicy"] = "awaitOperator"
    plan = validate_plan_document(doc)
    assert plan.metadata.failure_policy == "awaitOperator"
    report = report_for(doc)
    assert report.ok
    found = {(w.path, w.details["introducedIn"]) for w in report.warnings}
    assert found == {("/metadata/failurePolicy", "v1.1"), ("/steps/0/taskQueue", "v1.2")}


def test_old_plans_without_newer_fields_have_no_warnings() -> None:
    doc = steps_doc({"stepId": "a", "kind": "noop", "retry": {"maxAttempts": 2}}, version="v1.0")
    report = report_for(doc)
    assert report.ok
    assert report.issues == ()
    plan = validate_plan_document(doc)
    assert report_for(plan).issues == ()  # defaults filled by the model are not "used fields"


# --- prepare_plan ---


def test_prepare_plan_returns_plan_and_report_or_raises() -> None:
    data = json.dumps(plan_doc()).encode()
    plan, report = prepare_plan(
        data, engine="temporal", capabilities=TEMPORAL_CAPABILITIES, known_kinds={"dbt.run"}
    )
    assert plan.metadata.plan_id == "nightly-marts"
    assert report.plan_sha256 is not None
    with pytest.raises(DvtError) as info:
        prepare_plan(data, engine="temporal", capabilities=TEMPORAL_CAPABILITIES, known_kinds=())
    assert info.value.code is ErrorCode.STEP_KIND_UNKNOWN


def test_validating_the_same_bytes_again_gives_an_equal_fresh_plan() -> None:
    data = json.dumps(plan_doc(planId="memo-check")).encode()
    first = validate_plan_document(data)
    second = validate_plan_document(data)
    assert second == first
    assert second is not first
    assert second.params is not first.params  # callers cannot alter each other's plan
    third = validate_plan_document(data.decode())
    assert third == first
