"""Plan v1.3 forEach: validation codes, expansion, the bound, limits, replay and rebuild."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from contract_tests.catalogue import get_scenario
from contract_tests.driver import execute_scenario
from dvt_cli.main import cli
from dvt_engine.checksum import snapshot_checksum
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.errors import ErrorCode, PlanForEachInvalid
from dvt_engine.interpreter import Command, Finish, RunInterpreter, StartStep, WriteStepEvent
from dvt_engine.models.events import Event
from dvt_engine.models.run import StepStatus
from dvt_engine.planning import validate_plan_document
from dvt_engine.planning.report import build_validation_report
from dvt_engine.projector import project
from dvt_engine.rules.foreach import STEP_EXPANDED
from dvt_engine.stores.memory import MemoryRunStateStore

GOLDEN_PLANS = Path(__file__).resolve().parent.parent / "golden_fixtures" / "plans"


def doc(steps: list[dict[str, Any]], **metadata: Any) -> dict[str, Any]:
    params = metadata.pop("params", {})
    return {"metadata": {"planId": "p", "planVersion": "1", "schemaVersion": "v1.3", **metadata},
            "params": params, "steps": steps}


def fan(for_each: dict[str, Any], *, items: Any = (1, 2, 3), **metadata: Any) -> dict[str, Any]:
    return doc([{"stepId": "src", "kind": "echo", "params": {"xs": list(items)}},
                {"stepId": "each", "kind": "echo", "dependsOn": ["src"], "forEach": for_each},
                {"stepId": "sink", "kind": "noop", "dependsOn": ["each"]}], **metadata)


def rules(document: dict[str, Any]) -> list[str]:
    report = build_validation_report(document, engine="reference",
                                     capabilities=frozenset(), known_kinds=())
    return [i.details["rule"] for i in report.issues
            if i.code == ErrorCode.PLAN_FOREACH_INVALID]


def starts(commands: list[Command]) -> list[str]:
    return [c.step_id for c in commands if isinstance(c, StartStep)]


def written(commands: list[Command]) -> list[tuple[str, str]]:
    return [(c.event_type, c.step_id) for c in commands if isinstance(c, WriteStepEvent)]


@pytest.mark.parametrize(("for_each", "rule"), [
    ({"step": "nope", "path": "xs", "maxItems": 3}, "unknown_source_step"),
    ({"step": "sink", "maxItems": 3}, "source_not_settled"),
    ({"step": "src", "path": "xs"}, "bound_missing"),
    ({"step": "src", "path": "xs", "maxItems": 5000}, "bound_too_large"),
    ({"maxItems": 3}, "source_missing"),
    ({"step": "src", "param": "xs", "maxItems": 3}, "source_missing"),
    ({"param": "xs", "maxItems": 3, "when": "item > "}, "when_syntax"),
    ({"param": "xs", "maxItems": 3, "when": "other > 1"}, "when_variable"),
])
def test_a_bad_for_each_is_refused_with_its_rule(for_each: dict[str, Any], rule: str) -> None:
    document = fan(for_each)
    assert rules(document) == [rule]
    with pytest.raises(PlanForEachInvalid) as caught:
        validate_plan_document(document)
    assert caught.value.details["rule"] == rule


def test_a_step_with_a_childs_id_is_refused() -> None:
    document = fan({"step": "src", "path": "xs", "maxItems": 3})
    document["steps"].append({"stepId": "each[0]", "kind": "noop"})
    assert rules(document) == ["child_id_taken"]


def test_dvt_validate_reports_the_for_each_code(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("DVT_HOME", str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text(__import__("json").dumps(fan({"step": "nope", "maxItems": 3})))
    result = CliRunner().invoke(cli, ["validate", "--engine", "reference", str(bad)])
    assert result.exit_code != 0
    assert "PLAN_FOREACH_INVALID" in result.output
    good = CliRunner().invoke(cli, ["validate", "--engine", "reference",
                                    str(GOLDEN_PLANS / "v13-foreach-fan-in.json")])
    assert good.exit_code == 0, good.output
    assert "flow.forEach native" in good.output


def _drive(interp: RunInterpreter, commands: list[Command]) -> list[Command]:
    """Settle every started step (echo: output = params) until the run finishes."""
    log = list(commands)
    while not any(isinstance(c, Finish) for c in commands):
        running = interp.in_flight()
        assert running, "the run stalled"
        step_id = running[0]
        commands = interp.settle(step_id, 1, "succeeded",
                                 output=dict(interp.spec(step_id).params))
        log += commands
    return log


def test_children_get_their_item_and_the_fan_in_waits_for_them_in_item_order() -> None:
    interp = RunInterpreter(validate_plan_document(
        fan({"step": "src", "path": "xs", "maxItems": 3}, items=["a", "b", "c"])))
    log = _drive(interp, interp.begin())
    assert starts(log) == ["src", "each[0]", "each[1]", "each[2]", "sink"]
    assert [interp.spec(f"each[{i}]").params for i in range(3)] == [
        {"item": x, "index": i} for i, x in enumerate("abc")]
    expanded = [c for c in log if isinstance(c, WriteStepEvent) and c.event_type == STEP_EXPANDED]
    assert [c.payload for c in expanded] == [
        {"children": ["each[0]", "each[1]", "each[2]"], "items": ["a", "b", "c"]}]
    completed = [c for c in log if isinstance(c, WriteStepEvent) and c.step_id == "each"
                 and c.event_type == "StepCompleted"]
    assert completed[0].payload["output"] == [{"item": x, "index": i}
                                              for i, x in enumerate("abc")]
    # The template completes before its fan-in starts.
    order = [c.step_id if isinstance(c, StartStep) else (c.event_type, c.step_id)
             for c in log if isinstance(c, StartStep | WriteStepEvent)]
    assert order.index(("StepCompleted", "each")) < order.index("sink")


def test_a_list_over_the_bound_fails_the_step_before_any_child() -> None:
    interp = RunInterpreter(validate_plan_document(
        fan({"step": "src", "path": "xs", "maxItems": 2})))
    interp.begin()
    commands = interp.settle("src", 1, "succeeded", output={"xs": [1, 2, 3]})
    assert written(commands) == [("StepStarted", "each"), ("StepFailed", "each")]
    failed = [c for c in commands if isinstance(c, WriteStepEvent)][1]
    assert failed.payload["error"]["code"] == ErrorCode.FOREACH_TOO_MANY_ITEMS
    assert starts(commands) == []
    assert isinstance(commands[-1], Finish)
    assert commands[-1].event_type == "RunFailed"
    assert "each[0]" not in interp.steps


def test_a_source_that_is_not_a_list_fails_the_step() -> None:
    interp = RunInterpreter(validate_plan_document(fan({"step": "src", "maxItems": 2})))
    interp.begin()
    commands = interp.settle("src", 1, "succeeded", output={"xs": [1]})
    failed = [c for c in commands if isinstance(c, WriteStepEvent)][1]
    assert failed.payload["error"]["code"] == ErrorCode.FOREACH_ITEMS_INVALID


def test_children_respect_max_parallel_and_their_group() -> None:
    document = doc([{"stepId": "each", "kind": "echo", "concurrencyGroup": "db",
                     "forEach": {"param": "xs", "maxItems": 10}},
                    {"stepId": "other", "kind": "noop"}],
                   params={"xs": list(range(5))}, maxParallel=3, concurrencyGroups={"db": 2})
    interp = RunInterpreter(validate_plan_document(document))
    commands = interp.begin()
    assert starts(commands) == ["other", "each[0]", "each[1]"]
    peak = 0
    while not any(isinstance(c, Finish) for c in commands):
        running = interp.in_flight()
        peak = max(peak, sum(1 for s in running if s.startswith("each[")))
        assert len(running) <= 3
        commands = interp.settle(running[-1], 1, "succeeded")
    assert peak == 2
    assert interp.steps["each"].status == StepStatus.SUCCESS


def test_the_cursor_and_a_rebuild_carry_the_expansion() -> None:
    plan = validate_plan_document(fan({"step": "src", "path": "xs", "maxItems": 3}))
    interp = RunInterpreter(plan)
    interp.begin()
    interp.settle("src", 1, "succeeded", output={"xs": [7, 8, 9]})
    interp.settle("each[1]", 1, "succeeded", output={"v": 8})
    again = RunInterpreter.from_cursor(plan, interp.to_cursor())
    assert again.to_cursor() == interp.to_cursor()
    assert again.in_flight() == interp.in_flight() == ["each[0]", "each[2]"]
    assert again.spec("each[2]").params == {"item": 9, "index": 2}


async def _run(scenario_id: str) -> tuple[list[Event], Any, Any]:
    store = MemoryRunStateStore()
    engine = ReferenceEngine(store)
    try:
        outcome = await execute_scenario(get_scenario(scenario_id), engine, store, timeout=30.0)
    finally:
        await engine.close()
    events = await store.fetch_events(outcome.tenant_id, outcome.run_id)
    header = await store.get_run(outcome.tenant_id, outcome.run_id)
    return events, header, outcome.snapshot


@pytest.mark.parametrize("scenario_id", ["v13-foreach-condition", "v13-foreach-fan-in",
                                         "v13-foreach-empty", "v13-foreach-too-many"])
def test_replaying_the_log_gives_the_same_snapshot(scenario_id: str) -> None:
    events, header, snapshot = asyncio.run(_run(scenario_id))
    assert snapshot_checksum(project(header, events)) == snapshot_checksum(snapshot)
    # Every prefix of the log rebuilds an interpreter that agrees with the snapshot.
    for cut in range(1, len(events) + 1):
        prefix = events[:cut]
        snap = project(header, prefix)
        plan = validate_plan_document(get_scenario(scenario_id).plan)
        rebuilt = RunInterpreter.from_snapshot(plan, snap, prefix, run_params=header.params)
        assert {s.step_id for s in snap.steps} == set(rebuilt.steps)
        for step in snap.steps:
            assert rebuilt.steps[step.step_id].status == step.status


def test_the_builder_writes_for_each_as_a_person_would() -> None:
    from dvt_engine.builder import PlanBuilder

    built = (PlanBuilder("b", "1", schema_version="v1.3")
             .step("list", "echo", params={"xs": [1, 2]})
             .step("each", "echo", depends_on=["list"],
                   for_each={"step": "list", "path": "xs", "maxItems": 2}))
    document = built.document()
    assert document["steps"][1]["forEach"] == {"step": "list", "path": "xs", "maxItems": 2}
    assert validate_plan_document(document).step("each").for_each is not None


def test_a_template_costs_nothing_of_its_own_its_children_are_metered() -> None:
    from datetime import timedelta
    from decimal import Decimal

    from dvt_engine.cost import PriceTable, meter_run

    events, _, _ = asyncio.run(_run("v13-foreach-fan-in"))
    base = events[0].emitted_at
    # Second i for event i: the template spans several seconds, each child one.
    timed = [e.model_copy(update={"occurred_at": base + timedelta(seconds=i)})
             for i, e in enumerate(events)]
    prices = PriceTable(compute_units_per_second=Decimal(1), units_per_run=Decimal(0))
    (row,) = meter_run(timed, prices)
    spans = {}
    for i, e in enumerate(timed):
        if e.event_type == "StepStarted":
            spans[e.step_id] = i
        elif e.event_type == "StepCompleted" and e.step_id != "sync":
            spans[e.step_id] = i - spans[e.step_id]
    assert row.compute_units == Decimal(sum(v for k, v in spans.items() if k != "sync"))
