"""Hostile identifiers and plan documents never crash validation: a coded error or a valid plan."""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvt_engine.errors import DvtError, ErrorCode, IdentifierInvalid
from dvt_engine.identifiers import MAX_IDENTIFIER_LENGTH, identifier_problem, validate_identifier
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.validation import ValidationReport
from dvt_engine.planning.capabilities import ENGINE_CAPABILITIES
from dvt_engine.planning.validation import (
    build_validation_report,
    raise_for_report,
    validate_plan_document,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PLAN_CODES = {
    ErrorCode.SCHEMA_VALIDATION_FAILED,
    ErrorCode.PLAN_SCHEMA_VERSION_UNSUPPORTED,
    ErrorCode.IDENTIFIER_INVALID,
    ErrorCode.PLAN_INVALID,
    ErrorCode.PLAN_SECRET_LITERAL,
}

hostile_chars = st.one_of(
    st.characters(codec=None),  # everything, lone surrogates included
    st.sampled_from(["|", "\x00", "\x1f", "\x7f", "\x85", "\x9f", "\u2028", "\ud800", "\udfff"]),
)
hostile_text = st.one_of(
    st.text(hostile_chars, max_size=20),
    st.text(st.characters(codec="utf-8"), min_size=195, max_size=205),
    st.just("x" * (MAX_IDENTIFIER_LENGTH + 1)),
    st.just(""),
)
non_strings = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)  # fmt: skip
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
    ),
    max_leaves=20,
)


def base_plan() -> dict[str, Any]:
    return {
        "metadata": {"planId": "p", "planVersion": "1", "schemaVersion": "v1.2"},
        "steps": [
            {"stepId": "a", "kind": "noop"},
            {"stepId": "b", "kind": "echo", "dependsOn": ["a"], "params": {"x": 1}},
        ],
    }


def check_outcome(data: Any) -> ExecutionPlan | DvtError:
    """Validate ``data``: a plan, or a DvtError whose code belongs to plan validation."""
    try:
        plan = validate_plan_document(data)
    except DvtError as exc:
        error = exc
    else:
        assert isinstance(plan, ExecutionPlan)
        for step in plan.steps:
            assert identifier_problem(step.step_id) is None
            assert identifier_problem(step.kind) is None
        return plan
    assert error.code in PLAN_CODES, error
    json.dumps(error.to_dict())  # details are JSON-safe
    str(error).encode("utf-8")  # and printable
    return error


def check_report(data: Any) -> ValidationReport:
    """The report never raises, is JSON, and its verdict agrees with the first-error check."""
    report = build_validation_report(
        data,
        engine="conductor",
        capabilities=ENGINE_CAPABILITIES["conductor"],
        known_kinds={"noop", "echo"},
    )
    again = ValidationReport.model_validate_json(report.model_dump_json())
    assert again.ok == report.ok
    outcome = check_outcome(data)
    if isinstance(outcome, ExecutionPlan):
        assert not [i for i in report.errors if i.code in PLAN_CODES], report.errors
        return report
    assert not report.ok
    with pytest.raises(DvtError) as info:
        raise_for_report(report)
    assert info.value.code == outcome.code
    return report


# --- identifiers ---


@SETTINGS
@given(st.one_of(hostile_text, non_strings))
def test_hostile_identifiers_are_refused_with_a_code(value: Any) -> None:
    problem = identifier_problem(value)
    if problem is not None:
        with pytest.raises(IdentifierInvalid) as info:
            validate_identifier("stepId", value)
        assert info.value.code is ErrorCode.IDENTIFIER_INVALID
        json.dumps(info.value.to_dict())
        # docs/signals.md: error details name the field and the rule broken, never the value.
        assert info.value.details == {"field": "stepId", "problem": problem}
        assert info.value.message == f"stepId {problem}"
        if isinstance(value, str) and len(value) > 3:
            assert value not in json.dumps(info.value.to_dict(), ensure_ascii=False)
        return
    result = validate_identifier("stepId", value)
    assert result == value
    assert isinstance(result, str)
    assert 1 <= len(result) <= MAX_IDENTIFIER_LENGTH
    assert "|" not in result
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in result)


@SETTINGS
@given(
    st.sampled_from(["planId", "planVersion", "stepId", "kind", "dependsOn"]),
    st.one_of(hostile_text, non_strings),
)
def test_hostile_identifiers_inside_plans(field: str, value: Any) -> None:
    doc = base_plan()
    if field in ("planId", "planVersion"):
        doc["metadata"][field] = value
    elif field == "dependsOn":
        doc["steps"][1]["dependsOn"] = [value]
    else:
        doc["steps"][0][field] = value
    outcome = check_outcome(doc)
    if isinstance(value, str) and identifier_problem(value) is not None:
        assert isinstance(outcome, DvtError)
        assert outcome.code is ErrorCode.IDENTIFIER_INVALID
    check_report(doc)


# --- documents ---


@SETTINGS
@given(json_values)
def test_random_json_values(value: Any) -> None:
    check_report(value) if isinstance(value, dict) else check_outcome(value)
    try:
        encoded = json.dumps(value).encode()
    except UnicodeEncodeError:
        return
    check_report(encoded)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    check_report(data)


@SETTINGS
@given(st.data())
def test_truncated_plans(data: st.DataObject) -> None:
    raw = json.dumps(base_plan()).encode()
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    outcome = check_outcome(raw[:cut])
    assert isinstance(outcome, DvtError)
    assert outcome.code is ErrorCode.SCHEMA_VALIDATION_FAILED


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=sys.getrecursionlimit() * 3), st.sampled_from("[{"))
def test_deep_nesting_never_overflows(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    inner = "1" if opener == "[" else ""
    if opener == "{":
        nested = '{"k":' * depth + "{}" + "}" * depth
    else:
        nested = opener * depth + inner + closer * depth
    doc = base_plan()
    text = json.dumps(doc).replace('{"x": 1}', '{"x": ' + nested + "}")
    outcome = check_outcome(text.encode())
    if depth > 60:
        assert isinstance(outcome, DvtError)
        assert outcome.code is ErrorCode.SCHEMA_VALIDATION_FAILED
    check_report(text)
    # The same depth handed over as Python objects.
    value: Any = {}
    for _ in range(depth):
        value = {"k": value}
    doc["steps"][1]["params"] = value
    check_report(doc)


@SETTINGS
@given(
    st.lists(st.lists(st.integers(min_value=0, max_value=7), max_size=3), min_size=1, max_size=8),
    st.booleans(),
)
def test_random_dags_are_either_valid_or_plan_invalid(deps: list[list[int]], dup: bool) -> None:
    count = len(deps)
    steps = [
        {"stepId": f"s{i}", "kind": "noop", "dependsOn": [f"s{d}" for d in ds if d < count + 1]}
        for i, ds in enumerate(deps)
    ]
    if dup:
        steps.append({"stepId": "s0", "kind": "noop"})
    doc = {**base_plan(), "steps": steps}
    outcome = check_outcome(doc)
    check_report(doc)
    if isinstance(outcome, DvtError):
        assert outcome.code is ErrorCode.PLAN_INVALID
        if outcome.details["rule"] == "cycle":
            cycle = outcome.details["cycle"]
            graph = {s["stepId"]: s["dependsOn"] for s in steps}
            assert cycle[0] == cycle[-1]
            for here, there in itertools.pairwise(cycle):
                assert there in graph[here]
        return
    # A valid plan has a topological order: peel off steps whose dependencies are done.
    done: set[str] = set()
    pending = {s.step_id: set(s.depends_on) for s in outcome.steps}
    while pending:
        ready = [sid for sid, ds in pending.items() if ds <= done]
        assert ready, f"valid plan without a topological order: {pending}"
        for sid in ready:
            done.add(sid)
            del pending[sid]


paths_into_plan = st.sampled_from(
    [
        ("metadata",),
        ("metadata", "schemaVersion"),
        ("metadata", "requiresCapabilities"),
        ("metadata", "fallbackBehavior"),
        ("metadata", "operatorTimeoutMs"),
        ("steps",),
        ("steps", 0),
        ("steps", 1, "dependsOn"),
        ("steps", 1, "retry"),
        ("steps", 1, "timeoutMs"),
        ("steps", 1, "costHint"),
        ("params",),
    ]
)


@SETTINGS
@given(paths_into_plan, json_values)
def test_wrong_types_anywhere(path: tuple[Any, ...], value: Any) -> None:
    doc = base_plan()
    target: Any = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    check_report(doc)
