"""Plan v1.3 resource classes and priority: validation, the ready order, class limits, the
capability report, versions, routing choices and metering by class."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from dvt_cli.main import cli
from dvt_cli.ops import class_queues
from dvt_engine.cost import PriceTable, meter_run
from dvt_engine.errors import (
    ErrorCode,
    PlanDowngradeUnsupported,
    PlanResourceClassUnknown,
    SchemaValidationFailed,
    UsageError,
)
from dvt_engine.interpreter import Command, RunInterpreter, StartStep
from dvt_engine.models.events import Event
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import StepStatus
from dvt_engine.planning import prepare_plan, validate_plan_document
from dvt_engine.planning.capabilities import ENGINE_CAPABILITIES
from dvt_engine.planning.report import build_validation_report
from dvt_engine.planning.versions import change_schema_version
from dvt_engine.scheduler import ReadySteps, ready_steps
from dvt_engine.settings import TemporalSettings

GOLDEN_PLANS = Path(__file__).resolve().parent.parent / "golden_fixtures" / "plans"


def doc(steps: list[dict[str, Any]], **metadata: Any) -> dict[str, Any]:
    return {"metadata": {"planId": "p", "planVersion": "1", "schemaVersion": "v1.3", **metadata},
            "steps": steps}


def plan(steps: list[dict[str, Any]], **metadata: Any) -> ExecutionPlan:
    return validate_plan_document(doc(steps, **metadata))


def starts(commands: list[Command]) -> list[str]:
    return [c.step_id for c in commands if isinstance(c, StartStep)]


def fan(*steps: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"stepId": "root", "kind": "noop"}] + [
        {"kind": "noop", "dependsOn": ["root"], **s} for s in steps]


# --- validation --------------------------------------------------------------------------------


def test_an_unknown_resource_class_is_refused_with_its_path() -> None:
    data = doc([{"stepId": "a", "kind": "noop", "resourceClass": "gpu"},
                {"stepId": "b", "kind": "noop", "resourceClass": "gpux"}],
               resourceClasses={"gpu": {"maxParallel": 1}})
    report = build_validation_report(data, engine="reference",
                                     capabilities=ENGINE_CAPABILITIES["reference"], known_kinds=())
    (issue,) = [i for i in report.issues if i.code == ErrorCode.PLAN_RESOURCE_CLASS_UNKNOWN]
    assert issue.path == "/steps/1/resourceClass"
    assert issue.step_id == "b"
    assert issue.details["resourceClass"] == "gpux"
    assert issue.details["declared"] == ["gpu"]
    with pytest.raises(PlanResourceClassUnknown) as caught:
        prepare_plan(data, engine="reference", capabilities=ENGINE_CAPABILITIES["reference"],
                     known_kinds=())
    assert caught.value.details["path"] == "/steps/1/resourceClass"


def test_a_class_without_declarations_is_unknown_too() -> None:
    data = doc([{"stepId": "a", "kind": "noop", "resourceClass": "gpu"}])
    report = build_validation_report(data, engine="temporal",
                                     capabilities=ENGINE_CAPABILITIES["temporal"], known_kinds=())
    assert [i.code for i in report.errors] == [ErrorCode.PLAN_RESOURCE_CLASS_UNKNOWN]


@pytest.mark.parametrize("bad", [
    {"steps": [{"stepId": "a", "kind": "noop", "priority": 1001}]},
    {"steps": [{"stepId": "a", "kind": "noop", "priority": -1001}]},
    {"steps": [{"stepId": "a", "kind": "noop", "priority": 1.5}]},
    {"steps": [{"stepId": "a", "kind": "noop"}], "resourceClasses": {"gpu": {"maxParallel": 0}}},
    {"steps": [{"stepId": "a", "kind": "noop"}], "resourceClasses": {"gpu": {"speed": 2}}},
])
def test_the_schema_bounds_priority_and_class_limits(bad: dict[str, Any]) -> None:
    with pytest.raises(SchemaValidationFailed):
        validate_plan_document(doc(bad.pop("steps"), **bad))


# --- the ready order ---------------------------------------------------------------------------


def test_priority_orders_ready_steps_under_max_parallel_one() -> None:
    interp = RunInterpreter(plan(fan({"stepId": "low"}, {"stepId": "mid", "priority": 5},
                                     {"stepId": "high", "priority": 10},
                                     {"stepId": "neg", "priority": -1}, {"stepId": "zero"}),
                                 maxParallel=1))
    assert starts(interp.begin()) == ["root"]
    order = []
    last = "root"
    for _ in range(5):
        (started,) = starts(interp.settle(last, 1, "succeeded"))
        order.append(started)
        last = started
    # Equal priorities keep plan order; an absent priority is 0.
    assert order == ["high", "mid", "low", "zero", "neg"]


def test_without_limits_priority_orders_the_starts_of_one_move() -> None:
    interp = RunInterpreter(plan(fan({"stepId": "a"}, {"stepId": "b", "priority": 3})))
    interp.begin()
    assert starts(interp.settle("root", 1, "succeeded")) == ["b", "a"]


def test_a_waiting_high_priority_step_goes_first_when_its_dependency_settles() -> None:
    steps = [{"stepId": "slow", "kind": "noop"}, {"stepId": "fast", "kind": "noop"},
             {"stepId": "x1", "kind": "noop", "dependsOn": ["fast"]},
             {"stepId": "x2", "kind": "noop", "dependsOn": ["fast"]},
             {"stepId": "urgent", "kind": "noop", "dependsOn": ["slow"], "priority": 9}]
    interp = RunInterpreter(plan(steps, maxParallel=2))
    assert starts(interp.begin()) == ["slow", "fast"]
    assert starts(interp.settle("fast", 1, "succeeded")) == ["x1"]
    # x2 is ready and waiting, but urgent outranks it the moment slow settles.
    assert starts(interp.settle("slow", 1, "succeeded")) == ["urgent"]


def test_incremental_ready_set_equals_the_full_computation_with_priorities() -> None:
    rng = random.Random(7)
    for _ in range(50):
        n = rng.randint(2, 12)
        steps = [{"stepId": f"s{i}", "kind": "noop",
                  "dependsOn": sorted({f"s{j}" for j in range(i) if rng.random() < 0.3}),
                  "priority": rng.choice([None, -2, 0, 1, 5])} for i in range(n)]
        for s in steps:
            if s["priority"] is None:
                del s["priority"]
        p = plan(steps)
        prio = {s.step_id: s.priority for s in p.steps if s.priority}
        statuses = {s.step_id: StepStatus.PENDING for s in p.steps}
        ready = ReadySteps(p.steps, statuses, priorities=prio)
        for sid in rng.sample(list(statuses), k=n // 2):
            statuses[sid] = rng.choice([StepStatus.SUCCESS, StepStatus.RUNNING])
            ready.set_status(sid, statuses[sid])
        assert ready.ready() == ready_steps(p.steps, statuses, priorities=prio)


# --- class limits ------------------------------------------------------------------------------


def test_a_class_limit_holds_its_steps_while_others_start() -> None:
    interp = RunInterpreter(plan(
        fan({"stepId": "g1", "resourceClass": "gpu"}, {"stepId": "g2", "resourceClass": "gpu"},
            {"stepId": "g3", "resourceClass": "gpu", "priority": 1},
            {"stepId": "c1", "resourceClass": "cpu"}, {"stepId": "c2", "resourceClass": "cpu"},
            {"stepId": "plain"}),
        resourceClasses={"gpu": {"maxParallel": 1}, "cpu": {}}))
    interp.begin()
    # One gpu step (the highest priority), every cpu step (no limit), the plain step.
    assert starts(interp.settle("root", 1, "succeeded")) == ["g3", "c1", "c2", "plain"]
    assert starts(interp.settle("c1", 1, "succeeded")) == []
    assert starts(interp.settle("g3", 1, "succeeded")) == ["g1"]
    assert starts(interp.settle("g1", 1, "succeeded")) == ["g2"]


def test_class_group_and_run_limits_all_hold() -> None:
    interp = RunInterpreter(plan(
        fan({"stepId": "a", "resourceClass": "gpu", "concurrencyGroup": "w"},
            {"stepId": "b", "resourceClass": "gpu"},
            {"stepId": "c", "concurrencyGroup": "w"}, {"stepId": "d"}),
        maxParallel=2, concurrencyGroups={"w": 1}, resourceClasses={"gpu": {"maxParallel": 1}}))
    interp.begin()
    assert starts(interp.settle("root", 1, "succeeded")) == ["a", "d"]
    # b waits for gpu, c for group w: the run slot stays free until a settles.
    assert starts(interp.settle("d", 1, "succeeded")) == []
    assert starts(interp.settle("a", 1, "succeeded")) == ["b", "c"]


# --- capability report -------------------------------------------------------------------------


@pytest.mark.parametrize(("engine", "want"), [
    ("reference", {"flow.priority": "native", "flow.resourceClass.limit": "native",
                   "flow.resourceClass.routing": "degraded"}),
    ("temporal", {"flow.priority": "emulated", "flow.resourceClass.limit": "emulated",
                  "flow.resourceClass.routing": "native"}),
    ("conductor", {"flow.priority": "emulated", "flow.resourceClass.limit": "emulated",
                   "flow.resourceClass.routing": "emulated"}),
])
def test_the_report_says_how_each_engine_carries_out_classes_and_priority(
        engine: str, want: dict[str, str]) -> None:
    data = json.loads((GOLDEN_PLANS / "v13-resource-class-limit.json").read_text())
    report = build_validation_report(data, engine=engine,
                                     capabilities=ENGINE_CAPABILITIES[engine], known_kinds=())
    assert report.ok
    assert report.capabilities is not None
    assert report.capabilities.flow_features == want


def test_dvt_validate_prints_the_support_of_each_field(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("DVT_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["validate", "--engine", "reference",
                                      str(GOLDEN_PLANS / "v13-resource-class-limit.json")])
    assert result.exit_code == 0, result.output
    assert ("flow features: flow.priority native, flow.resourceClass.limit native, "
            "flow.resourceClass.routing degraded") in result.output


# --- versions ----------------------------------------------------------------------------------


def test_downgrade_refuses_classes_and_priority_and_upgrade_keeps_them() -> None:
    data = doc([{"stepId": "a", "kind": "noop", "resourceClass": "gpu", "priority": 2}],
               resourceClasses={"gpu": {"maxParallel": 1}})
    with pytest.raises(PlanDowngradeUnsupported) as caught:
        change_schema_version(data, "v1.2")
    assert caught.value.details["fields"] == [
        "/metadata/resourceClasses", "/steps/0/resourceClass", "/steps/0/priority"]
    older = {**data, "metadata": {**data["metadata"], "schemaVersion": "v1.2"}}
    report = build_validation_report(older, engine="reference",
                                     capabilities=ENGINE_CAPABILITIES["reference"], known_kinds=())
    assert report.ok  # honoured, with one warning per newer field
    assert len(report.warnings) == 3
    assert change_schema_version(older, "v1.3")["steps"][0]["priority"] == 2


# --- routing -----------------------------------------------------------------------------------


def test_temporal_queue_choice_step_queue_then_class_then_kind_then_default() -> None:
    from dvt_adapters_temporal.activity_options import step_task_queue

    p = plan([{"stepId": "own", "kind": "spark", "resourceClass": "gpu", "taskQueue": "mine"},
              {"stepId": "cls", "kind": "spark", "resourceClass": "gpu"},
              {"stepId": "unmapped", "kind": "spark", "resourceClass": "cpu"},
              {"stepId": "plain", "kind": "noop", "resourceClass": "cpu"}],
             resourceClasses={"gpu": {}, "cpu": {}})
    kinds, classes = {"spark": "spark-q"}, {"gpu": "gpu-q"}
    got = {s.step_id: step_task_queue(s, kinds, "main", classes) for s in p.steps}
    assert got == {"own": "mine", "cls": "gpu-q", "unmapped": "spark-q", "plain": "main"}
    settings = TemporalSettings(kind_queues=kinds, class_queues=classes)
    assert [settings.queue_for(s.kind, s.task_queue, s.resource_class) for s in p.steps] == [
        "mine", "gpu-q", "spark-q", "dvt-main" if settings.task_queue == "dvt-main"
        else settings.task_queue]
    assert settings.routed_queues() == ["spark-q", "gpu-q"]


def test_conductor_runs_a_routed_class_as_its_own_task_type() -> None:
    from dvt_adapters_conductor.mapping import (
        MappingOptions,
        definition_digest,
        step_task_types,
        workflow_definition,
    )

    p = plan([{"stepId": "g", "kind": "noop", "resourceClass": "gpu"},
              {"stepId": "c", "kind": "noop", "resourceClass": "cpu"},
              {"stepId": "q", "kind": "noop", "resourceClass": "gpu", "taskQueue": "own"}],
             resourceClasses={"gpu": {}, "cpu": {}})
    routed = MappingOptions(class_queues=(("gpu", "gpu-pool"),))
    assert step_task_types(p, routed) == ["dvt_step", "dvt_step_gpu-pool", "dvt_step_own"]
    definition = workflow_definition(p, plan_sha256="0" * 64, version=1, options=routed)
    names = [t["name"] for branch in definition["tasks"][0]["forkTasks"] for t in branch]
    assert names == ["dvt_step_gpu-pool", "dvt_step", "dvt_step_own"]
    # Routes are part of the definition's identity; hosts without routes keep theirs.
    assert definition_digest("0" * 64, routed) != definition_digest("0" * 64, MappingOptions())


def test_a_worker_for_an_unmapped_class_is_refused() -> None:
    engine = SimpleNamespace(settings=SimpleNamespace(class_queues={"gpu": "gpu-q"}))
    assert class_queues(engine, ("gpu",)) == ("gpu-q",)
    with pytest.raises(UsageError) as caught:
        class_queues(engine, ("gpu", "cpu"))
    assert caught.value.details["resourceClasses"] == ["cpu"]


# --- metering ----------------------------------------------------------------------------------


def _ev(etype: str, second: float, step: str | None = None, **payload: Any) -> Event:
    at = datetime(2026, 11, 3, 10, 0, tzinfo=UTC).timestamp() + second
    n = f"{etype}{step}{second}"
    return Event(event_id=n, event_type=etype, tenant_id="t", project_id="p",
                 environment_id="e", run_id="r", step_id=step, plan_id="etl", plan_version="1",
                 logical_attempt_id=1, idempotency_key=f"{abs(hash(n)):064d}"[:64],
                 emitted_at=datetime.fromtimestamp(at, UTC), emitted_by="engine",
                 payload=payload)


def test_metering_prices_each_attempt_by_its_class() -> None:
    events = [
        _ev("RunStarted", 0),
        _ev("StepStarted", 0, "train", kind="noop", resourceClass="gpu"),
        _ev("StepCompleted", 10, "train"),                                # 10 s x 8 = 80
        _ev("StepStarted", 10, "load", kind="noop", resourceClass="small"),
        _ev("StepFailed", 14.5, "load", error={"code": "X", "message": "x"}),  # 4.5 s x 0.25
        _ev("StepStarted", 15, "other", kind="noop", resourceClass="unpriced"),
        _ev("StepCompleted", 17, "other"),                                # 2 s x 2 (default)
        _ev("StepStarted", 17, "plain", kind="noop"),
        _ev("StepCompleted", 18, "plain"),                                # 1 s x 2
        _ev("StepStarted", 18, "hinted", kind="noop", resourceClass="gpu"),
        _ev("StepCompleted", 60, "hinted", cost={"units": 3}),            # its hint: 3
    ]
    prices = PriceTable(compute_units_per_second=Decimal(2), units_per_run=Decimal(0),
                        class_units_per_second={"gpu": Decimal(8), "small": Decimal("0.25")})
    (row,) = meter_run(events, prices)
    assert row.compute_units == Decimal("80") + Decimal("1.125") + 4 + 2 + 3
    assert PriceTable.model_validate(
        {"classUnitsPerSecond": {"gpu": 8}}).units_per_second("gpu") == Decimal(8)


def test_the_builder_writes_classes_and_priority() -> None:
    from dvt_engine.builder import PlanBuilder

    built = (PlanBuilder("b", "1", schema_version="v1.3",
                         resource_classes={"gpu": {"maxParallel": 2}})
             .step("a", "noop", resource_class="gpu", priority=3).build())
    assert built["metadata"]["resourceClasses"] == {"gpu": {"maxParallel": 2}}
    assert built["steps"][0] == {"stepId": "a", "kind": "noop", "resourceClass": "gpu",
                                 "priority": 3}


# --- property: limits hold, nothing that fits is passed over, starts come in ready order -------


@st.composite
def class_plans(draw: st.DrawFn) -> dict[str, Any]:
    """A random v1.3 DAG whose steps have random classes, groups and priorities."""
    n = draw(st.integers(2, 10))
    steps: list[dict[str, Any]] = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else []
        step: dict[str, Any] = {"stepId": f"s{i}", "kind": "noop",
                                "dependsOn": [f"s{d}" for d in deps]}
        cls = draw(st.sampled_from([None, "gpu", "cpu", "free"]))
        if cls is not None:
            step["resourceClass"] = cls
        if draw(st.booleans()):
            step["concurrencyGroup"] = "g"
        prio = draw(st.sampled_from([None, -3, 0, 2, 7]))
        if prio is not None:
            step["priority"] = prio
        steps.append(step)
    metadata: dict[str, Any] = {
        "resourceClasses": {"gpu": {"maxParallel": draw(st.integers(1, 2))},
                            "cpu": {"maxParallel": draw(st.integers(1, 3))}, "free": {}},
        "concurrencyGroups": {"g": draw(st.integers(1, 3))}}
    if draw(st.booleans()):
        metadata["maxParallel"] = draw(st.integers(1, 4))
    return doc(steps, **metadata)


@settings(max_examples=150, deadline=None)
@given(class_plans(), st.randoms(use_true_random=False))
def test_limits_hold_and_starts_follow_the_ready_order(data: dict[str, Any],
                                                       rng: random.Random) -> None:
    p = plan(data["steps"], **{k: v for k, v in data["metadata"].items()
                                if k not in ("planId", "planVersion", "schemaVersion")})
    spec = {s.step_id: s for s in p.steps}
    rank = {s.step_id: (-(s.priority or 0), i) for i, s in enumerate(p.steps)}
    limits = p.metadata.class_limits
    interp = RunInterpreter(p)
    commands = interp.begin()
    settled = 0
    while True:
        started = starts(commands)
        assert started == sorted(started, key=rank.__getitem__)
        assert interp.startable() == []  # nothing that fits was left waiting
        running = interp.in_flight()
        per_class: dict[str | None, int] = {}
        for sid in running:
            per_class[spec[sid].resource_class] = per_class.get(spec[sid].resource_class, 0) + 1
        for cls, limit in limits.items():
            assert per_class.get(cls, 0) <= limit
        if p.metadata.max_parallel is not None:
            assert len(running) <= p.metadata.max_parallel
        if not running:
            break
        commands = interp.settle(rng.choice(running), 1, "succeeded")
        settled += 1
    assert settled == len(p.steps)
    assert interp.is_finished
