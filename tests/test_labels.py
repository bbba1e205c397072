"""The label rules at their edges (dvt_engine.labels), which every surface shares."""

from __future__ import annotations

from typing import Any

import pytest

from dvt_engine.errors import ErrorCode, LabelsInvalid
from dvt_engine.labels import MAX_LABELS, matches, parse_label_pairs, validate_labels
from dvt_engine.models.run import RunContext


@pytest.mark.parametrize("labels", [
    {"a": ""}, {"a" * 63: "v"}, {"k": "v" * 200}, {"app.example.com/tier-2_x": "Gold Ü 🚀"},
    {f"k{i}": "v" for i in range(MAX_LABELS)}, {"token_ref": "env:X"}, {"url": "https://x/y"},
])
def test_labels_within_the_rules_are_kept_sorted_by_key(labels: dict[str, str]) -> None:
    kept = validate_labels(labels)
    assert kept == labels
    assert list(kept) == sorted(labels)


@pytest.mark.parametrize("labels", [
    {"": "v"}, {"a" * 64: "v"}, {"Team": "v"}, {"-team": "v"}, {"te am": "v"}, {"té": "v"},
    {"k": "v" * 201}, {"k": "a\x00b"}, {"k": "a\x1bb"}, {"k": "\ud800"}, {"k": 1}, {1: "v"},
    {f"k{i}": "v" for i in range(MAX_LABELS + 1)}, {"password": ""}, {"db_password": "x"},
    {"api_key": "x"}, {"k": "AKIAIOSFODNN7EXAMPLE"}, {"k": "postgres://u:hunter2@db/x"},
    ["k:v"], "k:v",
])
def test_labels_outside_the_rules_are_labels_invalid(labels: Any) -> None:
    with pytest.raises(LabelsInvalid) as refused:
        validate_labels(labels)
    assert refused.value.code == ErrorCode.LABELS_INVALID
    errors = refused.value.details["errors"]
    assert errors
    # The refusal names the rule, never the offending text.
    assert "hunter2" not in str(errors)
    assert "AKIA" not in str(errors)


def test_a_run_context_refuses_bad_labels_with_the_same_code() -> None:
    base = {"tenant_id": "t", "project_id": "p", "environment_id": "e", "run_id": "r"}
    assert RunContext(**base, labels={"b": "2", "a": "1"}).labels == {"a": "1", "b": "2"}
    with pytest.raises(LabelsInvalid):
        RunContext(**base, labels={"Bad": "x"})


def test_pairs_split_at_the_first_colon_and_every_pair_must_match() -> None:
    wanted = parse_label_pairs(["url:https://x:8080/y", "team:data", "team:data", "e:"])
    assert wanted == {"e": "", "team": "data", "url": "https://x:8080/y"}
    assert matches({"team": "data", "url": "https://x:8080/y", "e": "", "x": "y"}, wanted)
    assert not matches({"team": "data", "url": "https://x:8080/y"}, wanted)
    assert matches({}, None)
    assert matches({"a": "b"}, {})
    for bad in (["team"], ["Team:data"], [":data"], ["team:a", "team:b"],
                [f"k{i}:v" for i in range(MAX_LABELS + 1)]):
        with pytest.raises(LabelsInvalid):
            parse_label_pairs(bad)
