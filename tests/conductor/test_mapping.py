"""Plan-to-definition mapping: pure translation, no server."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from dvt_adapters_conductor.mapping import (
    MappingOptions,
    branches_of,
    chained_after,
    definition_digest,
    digest_of_definition,
    gated_positions,
    mapping_warnings,
    retry_settings,
    sanitize,
    step_task_types,
    workflow_definition,
    workflow_name,
)
from dvt_engine.models.plan import ExecutionPlan

OPTIONS = MappingOptions(task_prefix="dvt", lease_s=30, crash_retries=3)


def plan(steps: list[dict[str, Any]], **meta: Any) -> ExecutionPlan:
    return ExecutionPlan.model_validate({
        "metadata": {"planId": "p", "planVersion": "1", "schemaVersion": "v1.2", **meta},
        "steps": steps,
    })


def ids(p: ExecutionPlan, branches: list[list[int]]) -> list[list[str]]:
    return [[p.steps[i].step_id for i in b] for b in branches]


def test_a_chain_is_one_branch_and_first_steps_need_no_gate() -> None:
    p = plan([{"stepId": "a", "kind": "noop"},
              {"stepId": "b", "kind": "noop", "dependsOn": ["a"]},
              {"stepId": "c", "kind": "noop", "dependsOn": ["b"]},
              {"stepId": "d", "kind": "noop", "dependsOn": ["a"]}])
    assert ids(p, branches_of(p)) == [["a", "b", "c"], ["d"]]
    assert gated_positions(p) == {3}


def test_a_non_series_parallel_dag_keeps_every_dependency() -> None:
    # The "N" shape: c needs a, d needs a and b. No FORK/JOIN nesting expresses it exactly.
    p = plan([{"stepId": "a", "kind": "noop"}, {"stepId": "b", "kind": "noop"},
              {"stepId": "c", "kind": "noop", "dependsOn": ["a"]},
              {"stepId": "d", "kind": "noop", "dependsOn": ["a", "b"]}])
    branches = ids(p, branches_of(p))
    assert branches == [["a", "c"], ["b"], ["d"]]
    # every step sits in exactly one branch; a step chained into a branch has exactly one
    # dependency, and it is the step just before it in that branch
    flat = [s for b in branches for s in b]
    assert sorted(flat) == ["a", "b", "c", "d"]
    for branch in branches:
        for before, step in itertools.pairwise(branch):
            assert p.step(step).depends_on == (before,)


def test_fan_out_chains_only_the_first_dependent_and_gates_the_others() -> None:
    p = plan([{"stepId": "root", "kind": "noop"},
              *({"stepId": f"x{i}", "kind": "noop", "dependsOn": ["root"]} for i in range(3))])
    assert ids(p, branches_of(p)) == [["root", "x0"], ["x1"], ["x2"]]


def test_dependencies_later_in_plan_order_are_respected() -> None:
    p = plan([{"stepId": "late", "kind": "noop", "dependsOn": ["early"]},
              {"stepId": "early", "kind": "noop"}])
    assert ids(p, branches_of(p)) == [["early", "late"]]


def test_definition_shape() -> None:
    p = plan([{"stepId": "a", "kind": "noop"},
              {"stepId": "gate", "kind": "approval", "dependsOn": ["a"]},
              {"stepId": "b", "kind": "echo", "taskQueue": "gpu"},
              {"stepId": "c", "kind": "noop", "dependsOn": ["a", "b"]}])
    d = workflow_definition(p, plan_sha256="0" * 64, version=7, options=OPTIONS)
    assert d["name"] == workflow_name("p")
    assert d["version"] == 7
    fork, join = d["tasks"]
    assert fork["type"] == "FORK_JOIN"
    assert join["type"] == "JOIN"
    branches = fork["forkTasks"]
    assert [[t["type"] for t in b] for b in branches] == [
        ["SIMPLE", "HUMAN"], ["SIMPLE"], ["SIMPLE", "SIMPLE"]]
    assert [[t["name"] for t in b] for b in branches] == [
        ["dvt_step", "dvt_approval"], ["dvt_step_gpu"], ["dvt_gate", "dvt_step"]]
    assert join["joinOn"] == [b[-1]["taskReferenceName"] for b in branches]
    steps = [t for b in branches for t in b if t["name"] != "dvt_gate"]
    assert all(t.get("optional") for t in steps)
    assert "taskDefinition" not in branches[2][0]
    assert digest_of_definition(d) == definition_digest("0" * 64, OPTIONS)
    assert step_task_types(p, OPTIONS) == ["dvt_step", "dvt_step_gpu"]


def test_retry_policy_maps_to_exponential_backoff_plus_crash_retries() -> None:
    p = plan([{"stepId": "a", "kind": "noop",
               "retry": {"maxAttempts": 4, "initialIntervalMs": 2000}}])
    assert retry_settings(p.steps[0], OPTIONS) == {
        "retryCount": 3 + 3, "retryLogic": "EXPONENTIAL_BACKOFF", "retryDelaySeconds": 2,
        "backoffScaleFactor": 1}
    assert mapping_warnings(p) == []


@pytest.mark.parametrize(("retry", "fragment"), [
    ({"maxAttempts": 3, "initialIntervalMs": 1000, "backoffCoefficient": 3.0}, "doubles"),
    ({"maxAttempts": 3, "initialIntervalMs": 250}, "rounded"),
    ({"maxAttempts": 8, "initialIntervalMs": 1000, "maxIntervalMs": 5000}, "cap"),
])
def test_retry_policies_the_server_cannot_honour_are_warned(
    retry: dict[str, Any], fragment: str
) -> None:
    p = plan([{"stepId": "a", "kind": "noop", "retry": retry}])
    warnings = mapping_warnings(p)
    assert any(fragment in text for _step, text in warnings), warnings


def test_names_are_sanitized_and_distinct() -> None:
    assert sanitize("nightly marts/β", 80) == "nightly_marts__"
    assert workflow_name("a b") != workflow_name("a_b")


def test_steps_needing_a_few_steps_before_them_form_one_gateless_chain() -> None:
    # Each step depends on the 3 before it: its other dependencies are ancestors of the
    # latest one, so that one settling is all it waits for.
    p = plan([{"stepId": f"s{i}", "kind": "noop",
               **({"dependsOn": [f"s{j}" for j in range(max(0, i - 3), i)]} if i else {})}
              for i in range(8)])
    assert ids(p, branches_of(p)) == [[f"s{i}" for i in range(8)]]
    assert gated_positions(p) == set()
    assert chained_after(p) == {i: i - 1 for i in range(1, 8)}


def test_a_dependency_that_is_no_ancestor_of_the_latest_keeps_the_gate() -> None:
    # d needs b and c; c does not descend from b: d must wait for both, so it has a gate.
    p = plan([{"stepId": "a", "kind": "noop"},
              {"stepId": "b", "kind": "noop", "dependsOn": ["a"]},
              {"stepId": "c", "kind": "noop", "dependsOn": ["a"]},
              {"stepId": "d", "kind": "noop", "dependsOn": ["b", "c"]},
              {"stepId": "e", "kind": "noop", "dependsOn": ["a", "d"]}])
    assert ids(p, branches_of(p)) == [["a", "b"], ["c"], ["d", "e"]]
    assert gated_positions(p) == {2, 3}


@pytest.mark.parametrize("extra", [{"when": "steps.a.status == 'SUCCESS'"},
                                   {"join": "any"}])
def test_conditions_and_joins_are_never_chained_on_several_dependencies(
        extra: dict[str, Any]) -> None:
    p = plan([{"stepId": "a", "kind": "noop"},
              {"stepId": "b", "kind": "noop", "dependsOn": ["a"]},
              {"stepId": "c", "kind": "noop", "dependsOn": ["a", "b"], **extra}],
             schemaVersion="v1.3")
    assert ids(p, branches_of(p)) == [["a", "b"], ["c"]]
