"""The golden fixtures are complete, consistent and reviewed-looking (no engine needed)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from contract_tests.driver import join_needed
from contract_tests.parity import NormalizedEvent, dag_violations, streams
from contract_tests.scenarios import (
    EXPECTED_DIR,
    PLANS_DIR,
    SCENARIOS_DIR,
    Scenario,
    ScenarioError,
    generated_plans,
    load_scenarios,
    scenario_ids,
)
from dvt_engine.checksum import canonical_json
from dvt_engine.identifiers import identifier_problem

SCENARIOS = load_scenarios()

# The coverage the golden set promises (issue 2): every entry must name existing scenarios.
REQUIRED = {
    "one step": ["one-step"],
    "linear chain": ["linear-chain"],
    "fan-out and fan-in": ["fan-out-fan-in"],
    "diamond": ["diamond"],
    "50 parallel steps": ["parallel-50"],
    "250 steps in a chain": ["chain-250"],
    "flaky step succeeding on its third engine attempt": ["flaky-third-attempt"],
    "final failure under failFast": ["fail-fast-parallel", "fail-fast-waiting-gate"],
    "final failure under awaitOperator then RETRY_STEP": ["await-operator-retry"],
    "SKIP_STEP": ["skip-step", "await-operator-skip"],
    "approval gate approved": ["approval-approved"],
    "approval gate rejected": ["approval-rejected"],
    "pause and resume while a gate waits": ["pause-resume-gate"],
    "cancel mid-run": ["cancel-mid-run"],
    "plan whose hash does not match": ["plan-hash-mismatch"],
    "disallowed URI": ["uri-file", "uri-metadata-address"],
    "unknown schemaVersion": ["unknown-schema-version"],
    "missing capability, reject": ["capability-reject"],
    "missing capability, emulate": ["capability-emulate"],
    "missing capability, degrade": ["capability-degrade"],
    "v1.3 maxParallel with a group limit": ["v13-max-parallel-groups", "v13-quorum-combination"],
    "v1.3 any join racing a failing branch": ["v13-any-join-skip-losers",
                                              "v13-any-join-failing-loser"],
    "v1.3 condition false skipping a branch": ["v13-condition-skip-branch"],
    "v1.3 combination": ["v13-quorum-combination"],
    "v1.3 priorities under maxParallel 1": ["v13-priority-order", "v13-priority-first-steps"],
    "v1.3 resource class with a class limit": ["v13-resource-class-limit"],
}


def _expected(scenario: Scenario) -> dict[str, Any]:
    return scenario.expected


def test_every_required_case_is_covered() -> None:
    ids = set(scenario_ids())
    missing = {case: [i for i in want if i not in ids]
               for case, want in REQUIRED.items() if not set(want) <= ids}
    assert not missing


def test_files_pair_up() -> None:
    scenario_files = {p.stem for p in SCENARIOS_DIR.glob("*.json")}
    expected_files = {p.stem for p in EXPECTED_DIR.glob("*.json")}
    assert scenario_files == expected_files
    used_plans = {s.plan_name for s in SCENARIOS}
    assert used_plans == {p.name for p in PLANS_DIR.glob("*.json")}


def test_generated_plans_are_up_to_date() -> None:
    for name, plan in generated_plans().items():
        on_disk = json.loads((PLANS_DIR / name).read_text(encoding="utf-8"))
        assert on_disk == plan, f"run python -m contract_tests.scenarios --write-plans ({name})"


def test_plan_sizes() -> None:
    chain = json.loads((PLANS_DIR / "chain-250.json").read_text(encoding="utf-8"))
    assert len(chain["steps"]) == 250
    assert all(s["dependsOn"] == [chain["steps"][i - 1]["stepId"]]
               for i, s in enumerate(chain["steps"]) if i)
    parallel = json.loads((PLANS_DIR / "parallel-50.json").read_text(encoding="utf-8"))
    middle = [s for s in parallel["steps"] if s.get("dependsOn") == ["start"]]
    assert len(middle) == 50


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.scenario_id)
def test_scenario_is_well_formed(scenario: Scenario) -> None:
    for key in ("tenantId", "projectId", "environmentId"):
        assert identifier_problem(scenario.context[key]) is None
    assert scenario.intent, "every scenario states the outcome its author intends"
    signal_ids = [a.signal["signalId"] for a in scenario.actions if a.signal]
    assert len(signal_ids) == len(set(signal_ids))
    for action in scenario.actions:
        assert action.when, "an action fires on a condition, never on a timer"


def test_an_action_without_a_condition_kind_is_refused() -> None:
    with pytest.raises(ScenarioError):
        Scenario.from_document({"scenarioId": "x", "plan": "one-step.json",
                                "actions": [{"when": {}, "sleepMs": 100}]})


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.scenario_id)
def test_expectation_is_consistent(scenario: Scenario) -> None:
    expected = _expected(scenario)
    assert expected["scenarioId"] == scenario.scenario_id
    intent = scenario.intent
    if "error" in intent:
        assert expected["error"] == {"code": intent["error"]["code"]}
        assert "events" not in expected
        return
    form = expected["parityForm"]
    assert hashlib.sha256(canonical_json(form)).hexdigest() == expected["snapshotChecksum"]
    assert form["status"] == expected["status"] == intent["status"]
    for volatile in ("runId", "lastEventSeq", "startedAt", "completedAt", "engineRunRef"):
        assert volatile not in form
    events = [NormalizedEvent.from_dict(e) for e in expected["events"]]
    deps = {s["stepId"]: tuple(s.get("dependsOn", ())) for s in scenario.plan["steps"]}
    assert dag_violations(events, deps, join_needed(scenario.plan)) == []
    run_stream = streams(events)["(run)"]
    assert run_stream[0].event_type == "RunStarted"
    terminal = {"COMPLETED": "RunCompleted", "FAILED": "RunFailed", "CANCELLED": "RunCancelled"}
    ends = [e for e in run_stream if e.event_type in terminal.values()]
    assert [e.event_type for e in ends] == [terminal[expected["status"]]]
    starts = Counter((e.step_id, e.logical_attempt_id) for e in events
                     if e.event_type == "StepStarted")
    assert all(n == 1 for n in starts.values()), "StepStarted once per logical attempt"
    for step in form["steps"]:
        mine = [e.event_type for e in events if e.step_id == step["stepId"]]
        if step["status"] == "PENDING":
            assert mine == [], "a step that never started has no events"
        if step["status"] in ("SUCCESS", "FAILED"):
            assert mine[-1] == {"SUCCESS": "StepCompleted", "FAILED": "StepFailed"}[
                step["status"]]
    decisions = [e for e in run_stream if e.event_type.startswith("Signal")]
    assert len(decisions) == len(expected["decisions"]) == len(scenario.actions)


def test_expectations_are_canonically_formatted() -> None:
    for path in sorted(Path(EXPECTED_DIR).glob("*.json")):
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
        assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", \
            f"{path.name} was edited by hand; regenerate it"
