"""Plan validation: first-error order, DAG rules, versions, kinds, capabilities and the report."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest

from dvt_engine.errors import (
    CapabilityNotSupported,
    DvtError,
    ErrorCode,
    IdentifierInvalid,
    PlanInvalid,
    PlanSchemaVersionUnsupported,
    SchemaValidationFailed,
    StepKindUnknown,
)
from dvt_engine.models.plan import ExecutionPlan
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
    build_validation_report,
    find_cycles,
    prepare_plan,
    raise_for_report,
    validate_plan_document,
)


def plan_doc(**metadata: Any) -> dict[str, Any]:
    """The example plan of contract §2.2, with metadata overrides."""
    doc: dict[str, Any] = {
        "metadata": {
            "planId": "nightly-marts",
            "planVersion": "1.2.0",
            "schemaVersion": "v1.2",
            "requiresCapabilities": ["workflow.fan.parallel"],
            "fallbackBehavior": "reject",
            "targetAdapter": "any",
            "failurePolicy": "failFast",
            "requiresApproval": False,
        },
        "params": {"date": "2026-11-21"},
        "steps": [
            {"stepId": "extract", "kind": "noop"},
            {
                "stepId": "orders",
                "kind": "dbt.run",
                "dependsOn": ["extract"],
                "params": {"select": "orders"},
                "retry": {
                    "maxAttempts": 3,
                    "initialIntervalMs": 1000,
                    "backoffCoefficient": 2.0,
                    "maxIntervalMs": 60000,
                    "nonRetryableErrorCodes": ["BAD_SQL"],
                },
                "timeoutMs": 600000,
                "costHint": {"units": 2},
            },
            {"stepId": "signoff", "kind": "approval", "dependsOn": ["orders"]},
        ],
    }
    doc["metadata"].update(metadata)
    return doc


def steps_doc(*steps: dict[str, Any], version: str = "v1.2") -> dict[str, Any]:
    meta = {"planId": "p", "planVersion": "1", "schemaVersion": version}
    return {"metadata": meta, "steps": list(steps)}


def expect_error(data: Any, cls: type[DvtError]) -> DvtError:
    with pytest.raises(DvtError) as info:
        validate_plan_document(data)
    assert type(info.value) is cls, f"expected {cls.code}, got {info.value!r}"
    return info.value


def report_for(data: Any, engine: str = "temporal", **kw: Any) -> ValidationReport:
    kw.setdefault("capabilities", ENGINE_CAPABILITIES.get(engine, frozenset()))
    kw.setdefault("known_kinds", {"dbt.run"})
    return build_validation_report(data, engine=engine, **kw)


# --- documents that are valid ---


@pytest.mark.parametrize("form", ["dict", "bytes", "str"])
def test_contract_example_plan_validates_in_every_input_form(form: str) -> None:
    doc = plan_doc()
    data: Any = {"dict": doc, "bytes": json.dumps(doc).encode(), "str": json.dumps(doc)}[form]
    plan = validate_plan_document(data)
    assert isinstance(plan, ExecutionPlan)
    assert plan.step_ids == ("extract", "orders", "signoff")
    retry = plan.step("orders").retry
    assert retry is not None
    assert retry.non_retryable_error_codes == ("BAD_SQL",)
    assert plan.metadata.requires_capabilities == ("workflow.fan.parallel",)


def test_input_dict_is_not_modified() -> None:
    doc = plan_doc()
    before = copy.deepcopy(doc)
    validate_plan_document(doc)
    assert doc == before


def test_non_ascii_identifiers_are_allowed() -> None:
    plan = validate_plan_document(steps_doc({"stepId": "Bestellungen-Öl-日本", "kind": "noop"}))
    assert plan.step_ids == ("Bestellungen-Öl-日本",)


def test_step_without_depends_on_depends_on_nothing() -> None:
    plan = validate_plan_document(
        steps_doc({"stepId": "a", "kind": "noop"}, {"stepId": "b", "kind": "noop"})
    )
    assert plan.step("b").depends_on == ()


@pytest.mark.parametrize("version", ["v1.0", "v1.1", "v1.2"])
def test_every_supported_version_validates(version: str) -> None:
    plan = validate_plan_document(steps_doc({"stepId": "a", "kind": "noop"}, version=version))
    assert plan.metadata.schema_version == version


# --- first-error order ---


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (b"{not json", ""),
        (b"\xff\xfe", ""),
        (b"[]", ""),
        (b"null", ""),
        (b'{"metadata": []}', "/metadata"),
        (b'{"metadata": {"schemaVersion": 12}}', "/metadata/schemaVersion"),
        (b'{"metadata": {"schemaVersion": "v1.2", "schemaVersion": "v1.0"}}', ""),
        (b'{"metadata": {"schemaVersion": "v1.2"}, "x": NaN}', ""),
        (b'{"metadata": {"schemaVersion": "v1.2"}, "x": 1e400}', "/x"),
        (b'{"metadata": {"schemaVersion": "v1.2"}, "x": 9007199254740992}', "/x"),
        (b'{"metadata": {"schemaVersion": "v1.2"}, "x": "\\u0000"}', "/x"),
        (b'{"metadata": {"schemaVersion": "v1.2"}, "x": "\\ud800"}', "/x"),
    ],
)
def test_bad_json_and_shape_are_schema_errors(data: bytes, path: str) -> None:
    err = expect_error(data, SchemaValidationFailed)
    assert err.details["errors"], err.details
    assert err.details["errors"][0]["path"] == path
    assert err.retryable is False


def test_nesting_deeper_than_64_levels_is_refused() -> None:
    deep = b'{"metadata": {"schemaVersion": "v1.2"}, "x": ' + b"[" * 70 + b"]" * 70 + b"}"
    err = expect_error(deep, SchemaValidationFailed)
    assert err.details["errors"][0]["path"].startswith("/x/0/0/0")
    assert "64 levels" in err.details["errors"][0]["message"]


def test_unknown_schema_version_comes_before_schema_errors() -> None:
    doc = {"metadata": {"schemaVersion": "v2.0", "wholly": "different"}, "steps": "?"}
    err = expect_error(doc, PlanSchemaVersionUnsupported)
    assert err.details["schemaVersion"] == "v2.0"
    assert err.details["supported"] == ["v1.0", "v1.1", "v1.2"]


def test_schema_errors_list_every_failing_path() -> None:
    doc = plan_doc()
    doc["steps"][0]["timeoutMs"] = "soon"
    doc["steps"][1]["retry"]["maxAttempts"] = 0
    doc["metadata"]["fallbackBehavior"] = "pray"
    doc["surplus"] = 1
    err = expect_error(doc, SchemaValidationFailed)
    paths = {e["path"] for e in err.details["errors"]}
    assert {
        "/steps/0/timeoutMs",
        "/steps/1/retry/maxAttempts",
        "/metadata/fallbackBehavior",
        "",
    } <= paths


def test_snake_case_keys_are_refused_by_the_schema() -> None:
    doc = steps_doc({"step_id": "a", "kind": "noop"})
    err = expect_error(doc, SchemaValidationFailed)
    assert any(e["path"] == "/steps/0" for e in err.details["errors"])


def test_schema_errors_win_over_identifier_and_dag_errors() -> None:
    doc = steps_doc(
        {"stepId": "a|b", "kind": "noop", "dependsOn": ["ghost"]},
        {"stepId": "c", "kind": "noop", "timeoutMs": -1},
    )
    expect_error(doc, SchemaValidationFailed)


@pytest.mark.parametrize(
    ("field_path", "value"),
    [
        (("metadata", "planId"), "a|b"),
        (("metadata", "planVersion"), "x" * 201),
        (("metadata", "planId"), ""),
        (("steps", 0, "stepId"), "tab\there"),
        (("steps", 0, "kind"), "nul\x00"),
        (("steps", 0, "stepId"), "c1\x85"),
        (("steps", 0, "stepId"), "lone\ud800"),
    ],
)
def test_bad_identifiers_raise_identifier_invalid(field_path: tuple[Any, ...], value: str) -> None:
    doc = steps_doc({"stepId": "a", "kind": "noop"})
    target: Any = doc
    for part in field_path[:-1]:
        target = target[part]
    target[field_path[-1]] = value
    err = expect_error(doc, IdentifierInvalid)
    assert err.details["field"] == "/" + "/".join(str(p) for p in field_path)


def test_bad_identifier_in_depends_on_is_identifier_invalid() -> None:
    err = expect_error(
        steps_doc({"stepId": "a", "kind": "noop", "dependsOn": ["b|c"]}), IdentifierInvalid
    )
    assert err.details["field"] == "/steps/0/dependsOn/0"


def test_identifier_errors_win_over_dag_errors() -> None:
    doc = steps_doc(
        {"stepId": "a", "kind": "noop", "dependsOn": ["a"]}, {"stepId": "|", "kind": "x"}
    )
    expect_error(doc, IdentifierInvalid)


# --- DAG rules ---


def test_unknown_dependency() -> None:
    err = expect_error(
        steps_doc(
            {"stepId": "a", "kind": "noop"}, {"stepId": "b", "kind": "noop", "dependsOn": ["z"]}
        ),
        PlanInvalid,
    )
    assert err.details["rule"] == "unknown_dependency"
    assert err.details["stepId"] == "b"
    assert err.details["dependency"] == "z"
    assert err.details["path"] == "/steps/1/dependsOn/0"


def test_duplicate_step_id() -> None:
    err = expect_error(
        steps_doc({"stepId": "a", "kind": "noop"}, {"stepId": "a", "kind": "echo"}), PlanInvalid
    )
    assert err.details["rule"] == "duplicate_step_id"
    assert err.details["indexes"] == [0, 1]


def test_self_dependency() -> None:
    err = expect_error(steps_doc({"stepId": "a", "kind": "noop", "dependsOn": ["a"]}), PlanInvalid)
    assert err.details["rule"] == "self_dependency"


def test_cycle_reports_its_path() -> None:
    doc = steps_doc(
        {"stepId": "root", "kind": "noop"},
        {"stepId": "a", "kind": "noop", "dependsOn": ["root", "c"]},
        {"stepId": "b", "kind": "noop", "dependsOn": ["a"]},
        {"stepId": "c", "kind": "noop", "dependsOn": ["b"]},
        {"stepId": "after", "kind": "noop", "dependsOn": ["c"]},
    )
    err = expect_error(doc, PlanInvalid)
    assert err.details["rule"] == "cycle"
    cycle = err.details["cycle"]
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    # Each step in the path depends on the next one.
    deps = {s["stepId"]: s.get("dependsOn", []) for s in doc["steps"]}
    for here, there in itertools.pairwise(cycle):
        assert there in deps[here]


def test_all_dag_problems_are_listed_in_details() -> None:
    doc = steps_doc(
        {"stepId": "a", "kind": "noop", "dependsOn": ["ghost"]},
        {"stepId": "a", "kind": "noop"},
        {"stepId": "x", "kind": "noop", "dependsOn": ["y"]},
        {"stepId": "y", "kind": "noop", "dependsOn": ["x"]},
    )
    err = expect_error(doc, PlanInvalid)
    rules = [p["rule"] for p in err.details["problems"]]
    assert rules == ["duplicate_step_id", "unknown_dependency", "cycle"]
    assert err.details["rule"] == "duplicate_step_id"


def test_long_chain_and_wide_fan_validate_without_recursion_limits() -> None:
    chain = [{"stepId": "s0", "kind": "noop"}] + [
        {"stepId": f"s{i}", "kind": "noop", "dependsOn": [f"s{i - 1}"]} for i in range(1, 3000)
    ]
    assert len(validate_plan_document(steps_doc(*chain)).steps) == 3000
    chain[0] = {"stepId": "s0", "kind": "noop", "dependsOn": ["s2999"]}
    err = expect_error(steps_doc(*chain), PlanInvalid)
    assert len(err.details["cycle"]) == 3001


def test_find_cycles_finds_disjoint_cycles_deterministically() -> None:
    graph = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"], "e": ["a"], "f": []}
    assert find_cycles(graph) == [["a", "b", "a"], ["c", "d", "c"]]
    assert find_cycles({"a": [], "b": ["a"]}) == []


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
