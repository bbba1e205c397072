"""Plan validation of documents: valid forms, first-error order, identifiers and DAG rules.

The report, capabilities, versions and prepare_plan are in test_plan_validation_report.py;
secret literals in test_plan_validation_secrets.py.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest
from plan_validation_helpers import expect_error, plan_doc, steps_doc

from dvt_engine.errors import (
    IdentifierInvalid,
    PlanInvalid,
    PlanSchemaVersionUnsupported,
    SchemaValidationFailed,
)
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.planning.validation import (
    find_cycles,
    validate_plan_document,
)

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
    assert err.details["supported"] == ["v1.0", "v1.1", "v1.2", "v1.3"]


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
