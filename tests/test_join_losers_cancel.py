"""``losers: cancel`` of any/quorum joins (plan v1.3): the interpreter's decision, the log it
writes on the reference engine over the memory store, and what validation refuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from dvt_engine import Client, HandlerRegistry, MemoryStoreSettings, ReferenceSettings
from dvt_engine.errors import PlanDowngradeUnsupported, PlanJoinInvalid
from dvt_engine.interpreter import (
    CancelSteps,
    Command,
    Finish,
    RunInterpreter,
    StartStep,
    WriteStepEvent,
)
from dvt_engine.models.events import Event
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import RunStatus, StepStatus
from dvt_engine.planning import validate_plan_document
from dvt_engine.planning.capabilities import ENGINE_CAPABILITIES
from dvt_engine.planning.report import build_validation_report
from dvt_engine.planning.versions import change_schema_version
from dvt_engine.statemachine import event_problem
from dvt_engine.steps.registry import builtin_registry

GOLDEN_PLANS = Path(__file__).resolve().parent.parent / "golden_fixtures" / "plans"
CANCELLED = "join of j already met; cancelled while running"


def doc(steps: list[dict[str, Any]], **metadata: Any) -> dict[str, Any]:
    return {"metadata": {"planId": "p", "planVersion": "1", "schemaVersion": "v1.3", **metadata},
            "steps": steps}


def race_plan(losers: str = "cancel", mode: str = "any", **metadata: Any) -> ExecutionPlan:
    """root, then fast and slow (running) and late (not started: it waits for gate) into j."""
    return validate_plan_document(doc([
        {"stepId": "root", "kind": "noop"},
        {"stepId": "fast", "kind": "noop", "dependsOn": ["root"]},
        {"stepId": "slow", "kind": "sleep", "dependsOn": ["root"], "resourceClass": "big"},
        {"stepId": "gate", "kind": "noop", "dependsOn": ["root"]},
        {"stepId": "late", "kind": "noop", "dependsOn": ["gate"]},
        {"stepId": "j", "kind": "noop", "dependsOn": ["fast", "slow", "late"],
         "join": {"mode": mode, "losers": losers, **({"count": 1} if mode == "quorum" else {})}},
        {"stepId": "after", "kind": "noop", "dependsOn": ["j"]},
    ], resourceClasses={"big": {}}, **metadata))


def written(commands: list[Command]) -> list[tuple[str, str, Any]]:
    return [(c.event_type, c.step_id, dict(c.payload)) for c in commands
            if isinstance(c, WriteStepEvent)]


def met(interp: RunInterpreter) -> list[Command]:
    """Run root, and gate (still running), then let fast meet the join."""
    interp.begin()
    assert [c.step_id for c in interp.settle("root", 1, "succeeded")
            if isinstance(c, StartStep)] == ["fast", "slow", "gate"]
    return interp.settle("fast", 1, "succeeded")


# --- the decision ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["any", "quorum"])
def test_a_met_join_skips_and_stops_its_running_losers_and_skips_the_unstarted(
        mode: str) -> None:
    interp = RunInterpreter(race_plan(mode=mode))
    commands = met(interp)
    assert isinstance(commands[0], StartStep)
    assert commands[0].step_id == "j"
    # gate runs on: it is not a dependency of j. slow gets StepStarted (a duplicate when its
    # worker wrote it) then StepSkipped, then the stop; late never started.
    assert written(commands) == [
        ("StepSkipped", "late", {"reason": "join of j already met"}),
        ("StepStarted", "slow", {"kind": "sleep", "resourceClass": "big"}),
        ("StepSkipped", "slow", {"reason": CANCELLED}),
    ]
    assert [c for c in commands if isinstance(c, CancelSteps)] == [
        CancelSteps(("slow",), CANCELLED)]
    assert interp.is_cancelled_loser("slow")
    assert not interp.is_cancelled_loser("late")
    assert interp.steps["slow"].in_flight


def test_an_unstarted_loser_is_skipped_as_with_losers_skip() -> None:
    unstarted = RunInterpreter(validate_plan_document(doc([
        {"stepId": "root", "kind": "noop"},
        {"stepId": "a", "kind": "noop", "dependsOn": ["root"]},
        {"stepId": "w", "kind": "noop", "dependsOn": ["root"]},
        {"stepId": "b", "kind": "noop", "dependsOn": ["w"]},
        {"stepId": "j", "kind": "noop", "dependsOn": ["a", "b"],
         "join": {"mode": "any", "losers": "cancel"}},
    ])))
    unstarted.begin()
    unstarted.settle("root", 1, "succeeded")
    commands = unstarted.settle("a", 1, "succeeded")
    assert written(commands) == [("StepSkipped", "b", {"reason": "join of j already met"})]
    assert not [c for c in commands if isinstance(c, CancelSteps)]
    assert unstarted.steps["b"].status == StepStatus.SKIPPED


@pytest.mark.parametrize("late_outcome", ["succeeded", "failed", "cancelled", "refused"])
def test_a_cancelled_losers_late_outcome_is_discarded(late_outcome: str) -> None:
    interp = RunInterpreter(race_plan())
    met(interp)
    assert interp.settle("j", 1, "succeeded") == [StartStep("after", 1)]
    interp.settle("gate", 1, "succeeded")  # late was skipped when the join was met
    last = interp.settle("after", 1, "succeeded")
    assert last == []  # the run waits for slow's attempt to stop
    last = interp.settle("slow", 1, late_outcome)
    assert isinstance(last[-1], Finish)
    assert last[-1].event_type == "RunCompleted"
    assert interp.steps["slow"].status == StepStatus.SKIPPED
    assert interp.failure is None
    assert not interp.is_cancelled_loser("slow")


def test_a_refused_skip_leaves_the_loser_its_own_outcome() -> None:
    """The race: the loser's outcome reached the log before its skip, which is refused."""
    interp = RunInterpreter(race_plan())
    met(interp)
    assert interp.loser_skip_refused("slow") == []
    commands = interp.settle("slow", 1, "failed")  # its StepFailed is what the log holds
    assert interp.steps["slow"].status == StepStatus.FAILED
    assert interp.failure is not None
    assert interp.failure["stepId"] == "slow"
    assert not [c for c in commands if isinstance(c, StartStep)]  # failFast: nothing new


def test_the_cancelled_losers_survive_a_cursor_round_trip() -> None:
    interp = RunInterpreter(race_plan())
    met(interp)
    again = RunInterpreter.from_cursor(interp.plan, interp.to_cursor(compact=True))
    assert again.is_cancelled_loser("slow")
    assert again.steps["slow"].in_flight
    again.settle("slow", 1, "failed")
    assert again.steps["slow"].status == StepStatus.SKIPPED
    assert again.failure is None


def test_the_state_machine_lets_a_running_step_be_skipped_in_its_own_attempt() -> None:
    from dvt_engine.models.run import StepSubstatus
    from dvt_engine.statemachine import RunStatus as Status

    class Step:
        step_id = "slow"
        status = StepStatus.RUNNING
        substatus: StepSubstatus | None = None
        logical_attempt_id = 2

    class Skip:
        event_type = "StepSkipped"
        step_id = "slow"
        logical_attempt_id = 2

    class OldSkip(Skip):
        logical_attempt_id = 1

    assert event_problem(Status.RUNNING, Step(), Skip()) is None
    assert event_problem(Status.RUNNING, Step(), OldSkip()) is not None


# --- validation --------------------------------------------------------------------------------


def test_losers_cancel_with_an_all_join_is_refused() -> None:
    with pytest.raises(PlanJoinInvalid) as info:
        validate_plan_document(doc([
            {"stepId": "a", "kind": "noop"}, {"stepId": "b", "kind": "noop"},
            {"stepId": "j", "kind": "noop", "dependsOn": ["a", "b"],
             "join": {"mode": "all", "losers": "cancel"}}]))
    assert info.value.details["rule"] == "cancel_without_partial_join"
    assert info.value.details["stepId"] == "j"


def test_a_downgrade_to_v12_refuses_losers_cancel() -> None:
    data = (GOLDEN_PLANS / "v13-any-join-cancel-losers.json").read_bytes()
    with pytest.raises(PlanDowngradeUnsupported) as info:
        change_schema_version(data, "v1.2")
    assert "/steps/3/join" in info.value.details["fields"]


@pytest.mark.parametrize("engine", ["reference", "temporal", "conductor"])
def test_the_report_says_each_engine_stops_a_loser_natively(engine: str) -> None:
    data = json.loads((GOLDEN_PLANS / "v13-any-join-cancel-losers.json").read_text())
    report = build_validation_report(data, engine=engine,
                                     capabilities=ENGINE_CAPABILITIES[engine], known_kinds=())
    assert report.ok, report.errors
    assert report.capabilities is not None
    assert report.capabilities.flow_features["flow.join.losersCancel"] == "native"


# --- the reference engine over the memory store --------------------------------------------------


async def _run(plan: dict[str, Any], registry: HandlerRegistry, run_id: str
               ) -> tuple[RunStatus, dict[str, StepStatus], list[Event]]:
    async with await Client.connect(store=MemoryStoreSettings(), engine=ReferenceSettings(),
                                    registry=registry, tenant="acme", project="dw") as client:
        run = await client.start_run(plan, run_id=run_id)
        snap = await run.result(timeout=60)
        events = [e async for e in run.events(follow=False)]
    return snap.status, {s.step_id: s.status for s in snap.steps}, events


def _of(events: list[Event], step_id: str) -> list[str]:
    return [e.event_type for e in events if e.step_id == step_id]


async def test_the_reference_engine_stops_a_running_loser_and_discards_its_end() -> None:
    stopped = asyncio.Event()
    registry = builtin_registry()

    @registry.handler("test.slow")
    async def slow(ctx: Any) -> dict[str, Any]:
        try:
            await ctx.sleep(600)  # ten minutes: the run ends only because the cancel stops it
        finally:
            stopped.set()
        return {}

    plan = doc([
        {"stepId": "root", "kind": "noop"},
        {"stepId": "fast", "kind": "noop", "dependsOn": ["root"]},
        {"stepId": "slow", "kind": "test.slow", "dependsOn": ["root"],
         "retry": {"maxAttempts": 3, "initialIntervalMs": 0}},
        {"stepId": "j", "kind": "noop", "dependsOn": ["fast", "slow"],
         "join": {"mode": "any", "losers": "cancel"}},
        {"stepId": "after", "kind": "noop", "dependsOn": ["j"]},
    ])
    status, steps, events = await _run(plan, registry, "r-cancel")
    assert status == RunStatus.COMPLETED
    assert stopped.is_set()
    assert steps["slow"] == StepStatus.SKIPPED
    assert _of(events, "slow") == ["StepStarted", "StepSkipped"]  # no outcome, no retry
    skip = next(e for e in events if e.step_id == "slow" and e.event_type == "StepSkipped")
    assert skip.payload["reason"] == CANCELLED
    assert events[-1].event_type == "RunCompleted"


async def test_a_loser_whose_outcome_reached_the_log_first_keeps_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    refused: list[str] = []
    original = RunInterpreter.loser_skip_refused

    def spy(self: RunInterpreter, step_id: str) -> list[Command]:
        refused.append(step_id)
        return original(self, step_id)

    monkeypatch.setattr(RunInterpreter, "loser_skip_refused", spy)
    first_done = asyncio.Event()
    registry = builtin_registry()

    @registry.handler("test.first")
    async def first(ctx: Any) -> dict[str, Any]:
        first_done.set()
        return {"who": "first"}

    @registry.handler("test.second")
    async def second(ctx: Any) -> dict[str, Any]:
        # Ends right behind first: its StepCompleted is written before the driver, deciding
        # on first's settlement, writes the skip.
        await first_done.wait()
        return {"who": "second"}

    plan = doc([
        {"stepId": "a", "kind": "test.second"},
        {"stepId": "b", "kind": "test.first"},
        {"stepId": "j", "kind": "noop", "dependsOn": ["a", "b"],
         "join": {"mode": "any", "losers": "cancel"}},
    ])
    status, steps, events = await _run(plan, registry, "r-race")
    assert status == RunStatus.COMPLETED
    assert refused == ["a"]
    assert steps == {"a": StepStatus.SUCCESS, "b": StepStatus.SUCCESS, "j": StepStatus.SUCCESS}
    assert "StepSkipped" not in _of(events, "a")
