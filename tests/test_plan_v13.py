"""Plan schema v1.3: bounded concurrency, joins, conditions, their validation and versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dvt_cli.main import cli
from dvt_engine.errors import (
    ErrorCode,
    PlanConditionInvalid,
    PlanDowngradeUnsupported,
    PlanJoinInvalid,
    SchemaValidationFailed,
)
from dvt_engine.interpreter import (
    Command,
    Finish,
    RunInterpreter,
    StartStep,
    WriteStepEvent,
)
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import StepStatus
from dvt_engine.planning import validate_plan_document
from dvt_engine.planning.capabilities import ENGINE_CAPABILITIES
from dvt_engine.planning.report import build_validation_report
from dvt_engine.planning.versions import change_schema_version
from dvt_engine.rules.conditions import referenced_steps

GOLDEN_PLANS = Path(__file__).resolve().parent.parent / "golden_fixtures" / "plans"


def doc(steps: list[dict[str, Any]], **metadata: Any) -> dict[str, Any]:
    params = metadata.pop("params", {})
    return {"metadata": {"planId": "p", "planVersion": "1", "schemaVersion": "v1.3", **metadata},
            "params": params, "steps": steps}


def plan(steps: list[dict[str, Any]], **metadata: Any) -> ExecutionPlan:
    return validate_plan_document(doc(steps, **metadata))


def starts(commands: list[Command]) -> list[str]:
    return [c.step_id for c in commands if isinstance(c, StartStep)]


def skips(commands: list[Command]) -> dict[str, str]:
    return {c.step_id: c.payload["reason"] for c in commands
            if isinstance(c, WriteStepEvent) and c.event_type == "StepSkipped"}


def fan(n: int, **step: Any) -> list[dict[str, Any]]:
    return [{"stepId": "root", "kind": "noop"}] + [
        {"stepId": f"s{i}", "kind": "noop", "dependsOn": ["root"], **step} for i in range(n)]


# --- bounded concurrency ---------------------------------------------------------------------


def test_max_parallel_starts_in_plan_order_and_refills_as_steps_settle() -> None:
    interp = RunInterpreter(plan(fan(5), maxParallel=2))
    assert starts(interp.begin()) == ["root"]
    assert starts(interp.settle("root", 1, "succeeded")) == ["s0", "s1"]
    assert interp.startable() == []
    assert starts(interp.settle("s1", 1, "succeeded")) == ["s2"]
    assert starts(interp.settle("s0", 1, "succeeded")) == ["s3"]


def test_a_full_group_lets_a_later_step_of_another_group_start() -> None:
    steps = [{"stepId": "root", "kind": "noop"}] + [
        {"stepId": sid, "kind": "noop", "dependsOn": ["root"], "concurrencyGroup": group}
        for sid, group in (("w1", "warehouse"), ("w2", "warehouse"), ("w3", "warehouse"),
                           ("a1", "api"))]
    interp = RunInterpreter(plan(steps, maxParallel=3,
                                 concurrencyGroups={"warehouse": 2, "api": 1}))
    interp.begin()
    assert starts(interp.settle("root", 1, "succeeded")) == ["w1", "w2", "a1"]
    assert starts(interp.settle("a1", 1, "succeeded")) == []  # w3 waits for a warehouse slot
    assert starts(interp.settle("w2", 1, "succeeded")) == ["w3"]


def test_a_v12_plan_keeps_every_ready_step_starting_at_once() -> None:
    interp = RunInterpreter(plan(fan(4), schemaVersion="v1.2"))
    interp.begin()
    assert starts(interp.settle("root", 1, "succeeded")) == ["s0", "s1", "s2", "s3"]


# --- joins -----------------------------------------------------------------------------------


def _join_plan(join: Any, **metadata: Any) -> ExecutionPlan:
    joined = {"stepId": "j", "kind": "noop", "dependsOn": ["s0", "s1", "s2"], "join": join}
    return plan([*fan(3), joined], **metadata)


def test_any_join_starts_on_the_first_success() -> None:
    interp = RunInterpreter(_join_plan("any"))
    interp.begin()
    interp.settle("root", 1, "succeeded")
    assert starts(interp.settle("s2", 1, "succeeded")) == ["j"]


def test_quorum_join_waits_for_its_count() -> None:
    interp = RunInterpreter(_join_plan({"mode": "quorum", "count": 2}))
    interp.begin()
    interp.settle("root", 1, "succeeded")
    assert starts(interp.settle("s0", 1, "succeeded")) == []
    assert starts(interp.settle("s1", 1, "succeeded")) == ["j"]


def test_losers_skip_skips_dependencies_that_have_not_started() -> None:
    interp = RunInterpreter(plan([
        {"stepId": "root", "kind": "noop"},
        {"stepId": "a", "kind": "noop", "dependsOn": ["root"]},
        {"stepId": "late", "kind": "noop", "dependsOn": ["root"]},
        {"stepId": "b", "kind": "noop", "dependsOn": ["late"]},
        {"stepId": "c", "kind": "noop", "dependsOn": ["root"]},
        {"stepId": "j", "kind": "noop", "dependsOn": ["a", "b", "c"],
         "join": {"mode": "any", "losers": "skip"}},
    ]))
    interp.begin()
    assert starts(interp.settle("root", 1, "succeeded")) == ["a", "late", "c"]
    commands = interp.settle("a", 1, "succeeded")
    assert starts(commands) == ["j"]
    assert skips(commands) == {"b": "join of j already met"}  # c runs on: it had started
    assert interp.steps["c"].status == StepStatus.RUNNING
    interp.settle("j", 1, "succeeded")
    interp.settle("c", 1, "succeeded")
    assert isinstance(interp.settle("late", 1, "succeeded")[-1], Finish)


def test_a_failing_dependency_still_fails_the_run_after_its_join_was_met() -> None:
    interp = RunInterpreter(_join_plan("any"))
    interp.begin()
    interp.settle("root", 1, "succeeded")
    interp.settle("s0", 1, "succeeded")
    interp.settle("j", 1, "succeeded")
    interp.settle("s1", 1, "succeeded")
    last = interp.settle("s2", 1, "failed")
    assert isinstance(last[-1], Finish)
    assert last[-1].event_type == "RunFailed"


# --- conditions and skip propagation -----------------------------------------------------------


def _conditional(skip_rule: str | None = None) -> ExecutionPlan:
    extra = {"skipRule": skip_rule} if skip_rule else {}
    return plan([
        {"stepId": "count", "kind": "echo"},
        {"stepId": "load", "kind": "noop", "dependsOn": ["count"],
         "when": "steps.count.output.rows > params.min"},
        {"stepId": "publish", "kind": "noop", "dependsOn": ["load"]},
    ], params={"min": 0}, **extra)


def test_a_false_condition_skips_with_the_expression_as_reason() -> None:
    interp = RunInterpreter(_conditional())
    interp.begin()
    commands = interp.settle("count", 1, "succeeded", output={"rows": 0})
    assert skips(commands) == {"load": "condition false: steps.count.output.rows > params.min"}
    assert starts(commands) == ["publish"]  # skipRule satisfy (the default)


def test_cascade_skips_the_dependants_and_completes() -> None:
    interp = RunInterpreter(_conditional("cascade"))
    interp.begin()
    commands = interp.settle("count", 1, "succeeded", output={"rows": 0})
    assert skips(commands) == {"load": "condition false: steps.count.output.rows > params.min",
                               "publish": "dependency skipped: load"}
    assert isinstance(commands[-1], Finish)
    assert commands[-1].payload == {
        "succeeded": 1, "skipped": 2}


def test_a_true_condition_starts_the_step() -> None:
    interp = RunInterpreter(_conditional())
    interp.begin()
    assert starts(interp.settle("count", 1, "succeeded", output={"rows": 3})) == ["load"]


def test_a_condition_that_fails_at_run_time_is_false_with_the_error() -> None:
    interp = RunInterpreter(_conditional())
    interp.begin()
    reason = skips(interp.settle("count", 1, "succeeded", output={"other": 1}))["load"]
    assert reason.startswith("condition failed (")
    assert "steps.count.output.rows" in reason


def test_outputs_survive_a_cursor_round_trip_and_a_rebuild_asks_the_same() -> None:
    interp = RunInterpreter(_conditional())
    interp.begin()
    interp.steps["count"].status = StepStatus.SUCCESS  # settled, its output known
    interp.steps["count"].in_flight = False
    interp.outputs["count"] = {"rows": 0}
    again = RunInterpreter.from_cursor(interp.plan, interp.to_cursor())
    assert again.outputs == {"count": {"rows": 0}}
    assert again.startable() == ["publish"]  # load is skipped first, then publish is ready
    assert again.steps["load"].status == StepStatus.PENDING  # the question changed nothing


def test_only_read_outputs_are_kept() -> None:
    interp = RunInterpreter(plan(fan(1)))
    interp.begin()
    interp.settle("root", 1, "succeeded", output={"big": "x" * 100})
    assert interp.outputs == {}
    assert "outputs" not in interp.to_cursor()


def test_step_references_are_read_from_both_forms() -> None:
    assert referenced_steps("steps.a.output > 1 && steps['b-c'].status == \"SKIPPED\" "
                            "|| steps[\"d\"].output.x") == ["a", "b-c", "d"]


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(("when", "rule"), [
    ("steps.count.output.rows >", "syntax"),
    ("nope > 1", "variable"),
    ("steps.ghost.output == 1", "step"),
    ("steps.sibling.status == 'SUCCESS'", "step"),  # not settled before "load"
    ("params.min + 'x' == 1", "type"),
    ("params.min", "type"),  # not a bool
])
def test_bad_conditions_are_refused_with_their_code(when: str, rule: str) -> None:
    steps = [{"stepId": "count", "kind": "echo"}, {"stepId": "sibling", "kind": "noop"},
             {"stepId": "load", "kind": "noop", "dependsOn": ["count"], "when": when}]
    with pytest.raises(PlanConditionInvalid) as info:
        plan(steps, params={"min": 0})
    assert info.value.code == ErrorCode.PLAN_CONDITION_INVALID
    assert info.value.details["rule"] == rule
    assert info.value.details["path"] == "/steps/2/when"


def test_a_condition_may_not_read_a_dependency_behind_an_any_join() -> None:
    steps = [*fan(2), {"stepId": "j", "kind": "noop", "dependsOn": ["s0", "s1"], "join": "any",
                       "when": "steps.s0.status == 'SUCCESS'"}]
    with pytest.raises(PlanConditionInvalid):
        plan(steps)


@pytest.mark.parametrize(("join", "rule"), [
    ({"mode": "quorum"}, "quorum_without_count"),
    ({"mode": "quorum", "count": 4}, "quorum_too_large"),
    ({"mode": "any", "count": 1}, "count_without_quorum"),
])
def test_bad_joins_are_refused(join: dict[str, Any], rule: str) -> None:
    with pytest.raises(PlanJoinInvalid) as info:
        _join_plan(join)
    assert info.value.details["rule"] == rule


def test_an_unlimited_group_and_a_join_without_dependencies_are_refused() -> None:
    with pytest.raises(PlanJoinInvalid) as info:
        plan([{"stepId": "a", "kind": "noop", "concurrencyGroup": "warehouse"}])
    assert info.value.details["rule"] == "unknown_concurrency_group"
    with pytest.raises(PlanJoinInvalid) as info:
        plan([{"stepId": "a", "kind": "noop", "join": "any"}])
    assert info.value.details["rule"] == "join_without_dependencies"


def test_the_schema_refuses_an_unknown_join_mode_and_a_zero_limit() -> None:
    with pytest.raises(SchemaValidationFailed):
        _join_plan("some")
    with pytest.raises(SchemaValidationFailed):
        plan(fan(1), maxParallel=0)
    with pytest.raises(SchemaValidationFailed):
        plan(fan(1), concurrencyGroups={"g": 0})


def test_v13_fields_under_an_older_version_run_with_a_warning() -> None:
    document = doc(fan(2), maxParallel=1, schemaVersion="v1.2")
    report = build_validation_report(document, engine="reference",
                                     capabilities=ENGINE_CAPABILITIES["reference"], known_kinds=())
    assert report.ok
    assert [(w.path, w.details["introducedIn"]) for w in report.warnings] == [
        ("/metadata/maxParallel", "v1.3")]


@pytest.mark.parametrize(("engine", "support"), [
    ("reference", "native"), ("temporal", "emulated"), ("conductor", "emulated")])
def test_the_report_says_how_each_engine_carries_out_the_flow_features(
        engine: str, support: str) -> None:
    data = json.loads((GOLDEN_PLANS / "v13-quorum-combination.json").read_text())
    report = build_validation_report(data, engine=engine,
                                     capabilities=ENGINE_CAPABILITIES[engine], known_kinds=())
    assert report.capabilities is not None
    assert report.capabilities.flow_features == {
        "flow.concurrency.bounded": support, "flow.join.partial": support,
        "flow.conditions": support}
    old = json.loads((GOLDEN_PLANS / "diamond.json").read_text())
    report = build_validation_report(old, engine=engine,
                                     capabilities=ENGINE_CAPABILITIES[engine], known_kinds=())
    assert report.capabilities is not None
    assert report.capabilities.flow_features == {}


# --- upgrade and downgrade ---------------------------------------------------------------------


def test_upgrade_changes_only_the_version() -> None:
    old = json.loads((GOLDEN_PLANS / "diamond.json").read_text())
    new = change_schema_version(old, "v1.3")
    assert new["metadata"].pop("schemaVersion") == "v1.3"
    old["metadata"].pop("schemaVersion")
    assert new == old


def test_downgrade_refuses_a_plan_that_uses_v13_fields() -> None:
    data = (GOLDEN_PLANS / "v13-condition-skip-branch.json").read_bytes()
    with pytest.raises(PlanDowngradeUnsupported) as info:
        change_schema_version(data, "v1.2")
    assert info.value.details["fields"] == [
        "/metadata/skipRule", "/steps/1/when", "/steps/3/when", "/steps/4/join"]


def test_the_cli_upgrades_and_refuses_a_downgrade(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "up.json"
    result = runner.invoke(cli, ["plan", "upgrade", str(GOLDEN_PLANS / "diamond.json"),
                                 "--to", "v1.3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["metadata"]["schemaVersion"] == "v1.3"
    result = runner.invoke(cli, ["plan", "downgrade", "--json", "--to", "v1.2",
                                 str(GOLDEN_PLANS / "v13-max-parallel-groups.json")])
    assert result.exit_code == 2
    error = json.loads(result.output)["error"]
    assert error["code"] == "PLAN_DOWNGRADE_UNSUPPORTED"
    assert error["details"]["fields"][:2] == ["/metadata/maxParallel",
                                              "/metadata/concurrencyGroups"]
    result = runner.invoke(cli, ["plan", "downgrade", str(out), "--to", "v1.2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["metadata"]["schemaVersion"] == "v1.2"


def test_the_runs_params_override_the_plans_in_conditions() -> None:
    gated = plan([{"stepId": "a", "kind": "noop", "when": "params.go"}], params={"go": False})
    assert skips(RunInterpreter(gated).begin()) == {"a": "condition false: params.go"}
    interp = RunInterpreter(gated, run_params={"go": True})
    assert starts(interp.begin()) == ["a"]
    rebuilt = RunInterpreter.from_cursor(gated, RunInterpreter(gated).to_cursor(),
                                         run_params={"go": True})
    assert rebuilt.startable() == ["a"]


def test_a_param_only_the_run_gives_is_not_a_validation_error() -> None:
    given = plan([{"stepId": "a", "kind": "noop", "when": "params.region == 'eu'"}])
    interp = RunInterpreter(given, run_params={"region": "eu"})
    assert starts(interp.begin()) == ["a"]


def test_dvt_validate_names_the_flow_features(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("DVT_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["validate", "--engine", "reference",
                                      str(GOLDEN_PLANS / "v13-condition-skip-branch.json")])
    assert result.exit_code == 0, result.output
    assert "flow features: flow.join.partial native, flow.conditions native" in result.output


def test_the_builder_writes_v13_fields_as_a_person_would() -> None:
    from dvt_engine.builder import PlanBuilder

    built = (PlanBuilder("b", "1", schema_version="v1.3", max_parallel=2,
                         concurrency_groups={"warehouse": 1}, skip_rule="cascade",
                         params={"go": True})
             .step("a", "echo", concurrency_group="warehouse")
             .step("b", "noop", depends_on=["a"], when="steps.a.status == 'SUCCESS'")
             .step("c", "noop", depends_on=["a", "b"], join={"mode": "any", "losers": "skip"})
             .build())
    assert built["metadata"]["maxParallel"] == 2
    assert built["metadata"]["concurrencyGroups"] == {"warehouse": 1}
    assert built["steps"][1]["when"] == "steps.a.status == 'SUCCESS'"
    assert built["steps"][2]["join"] == {"mode": "any", "losers": "skip"}
    assert validate_plan_document(built).step("c").join_spec.losers == "skip"
