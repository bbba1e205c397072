"""The interpreter's compact cursor: step states as ranges of plan positions, the same rebuild."""

from __future__ import annotations

import random
from typing import Any

from dvt_engine.interpreter import Finish, RunInterpreter, StartStep
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.snapshot import StepError
from dvt_engine.planning import validate_plan_document


def chain_like(n: int, fan_in: int = 3) -> ExecutionPlan:
    """n noop steps, each depending on the (up to) ``fan_in`` before it."""
    steps: list[dict[str, Any]] = []
    for i in range(n):
        step: dict[str, Any] = {"stepId": f"s{i}", "kind": "noop"}
        if i:
            step["dependsOn"] = [f"s{j}" for j in range(max(0, i - fan_in), i)]
        steps.append(step)
    return ExecutionPlan.model_validate(
        {"metadata": {"planId": "p", "planVersion": "1", "schemaVersion": "v1.2",
                      "failurePolicy": "awaitOperator"}, "steps": steps})


def assert_same(rebuilt: RunInterpreter, interp: RunInterpreter) -> None:
    assert rebuilt.to_cursor() == interp.to_cursor()
    assert rebuilt.to_cursor(compact=True) == interp.to_cursor(compact=True)
    assert list(rebuilt.steps) == list(interp.steps)  # statuses() keeps plan order
    assert rebuilt.in_flight() == interp.in_flight()
    assert rebuilt.startable() == interp.startable()


def test_a_finished_prefix_is_one_range() -> None:
    plan = chain_like(1000)
    interp = RunInterpreter(plan)
    commands = interp.begin()
    for _ in range(400):
        (start,) = [c for c in commands if isinstance(c, StartStep)]
        commands = interp.settle(start.step_id, start.logical_attempt_id, "succeeded")
    ranges = interp.to_cursor(compact=True)["stepRanges"]
    assert ranges == [["SUCCESS", 1, False, False, 0, 399], ["RUNNING", 1, True, False, 400, 400]]
    assert "steps" not in interp.to_cursor(compact=True)
    assert_same(RunInterpreter.from_cursor(plan, interp.to_cursor(compact=True)), interp)


def test_every_state_of_a_run_with_failures_and_retries_rebuilds_the_same() -> None:
    plan = chain_like(60, fan_in=2)
    rnd = random.Random(7)
    interp = RunInterpreter(plan)
    commands = interp.begin()
    finished = False
    while not finished:
        for form in (False, True):
            rebuilt = RunInterpreter.from_cursor(plan, interp.to_cursor(compact=form))
            assert_same(rebuilt, interp)
        running = interp.in_flight()
        if not running:
            # awaitOperator: retry the failed step, with a new logical attempt.
            failed = [s for s, st in interp.statuses().items() if str(st) == "FAILED"]
            commands = interp.signal_accepted("RETRY_STEP", {"stepId": failed[0]})
        else:
            step = rnd.choice(running)
            attempt = interp.steps[step].logical_attempt_id
            if rnd.random() < 0.1:
                commands = interp.settle(step, attempt, "failed",
                                         StepError(code="STEP_FAILED", message="boom"))
            else:
                commands = interp.settle(step, attempt, "succeeded")
        finished = any(isinstance(c, Finish) for c in commands)
    assert interp.is_finished
    assert max(st.logical_attempt_id for st in interp.steps.values()) > 1


def test_the_compact_cursor_carries_a_foreach_expansion() -> None:
    plan = validate_plan_document({
        "metadata": {"planId": "f", "planVersion": "1", "schemaVersion": "v1.3"},
        "steps": [{"stepId": "src", "kind": "echo"},
                  {"stepId": "each", "kind": "echo", "dependsOn": ["src"],
                   "forEach": {"step": "src", "path": "xs", "maxItems": 3}},
                  {"stepId": "after", "kind": "noop", "dependsOn": ["each"]}]})
    interp = RunInterpreter(plan)
    interp.begin()
    interp.settle("src", 1, "succeeded", output={"xs": [7, 8, 9]})
    interp.settle("each[1]", 1, "succeeded", output={"v": 8})
    again = RunInterpreter.from_cursor(plan, interp.to_cursor(compact=True))
    assert_same(again, interp)
    assert again.in_flight() == ["each[0]", "each[2]"]
