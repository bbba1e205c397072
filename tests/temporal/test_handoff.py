"""The interpreter a workflow run leaves for the run that continues it (unit, no server)."""

from __future__ import annotations

from typing import Any

from dvt_adapters_temporal import handoff
from dvt_engine.interpreter import RunInterpreter
from dvt_engine.models.plan import ExecutionPlan


def chain(n: int) -> ExecutionPlan:
    steps: list[dict[str, Any]] = [{"stepId": "s0", "kind": "noop"}]
    steps += [{"stepId": f"s{i}", "kind": "noop", "dependsOn": [f"s{i - 1}"]}
              for i in range(1, n)]
    return ExecutionPlan.model_validate(
        {"metadata": {"planId": "p", "planVersion": "1", "schemaVersion": "v1.2"},
         "steps": steps})


def started(n: int = 5) -> RunInterpreter:
    interp = RunInterpreter(chain(n))
    interp.begin()
    interp.settle("s0", 1, "succeeded")
    return interp


def test_the_next_run_takes_the_interpreter_its_cursor_describes_once() -> None:
    interp = started()
    handoff.leave("run-a", interp)
    cursor = interp.to_cursor(compact=True)
    assert handoff.take("run-a", cursor) is interp
    assert handoff.take("run-a", cursor) is None  # taken: a replay of the run rebuilds


def test_an_interpreter_whose_state_moved_on_is_not_taken() -> None:
    interp = started()
    cursor = interp.to_cursor(compact=True)
    handoff.leave("run-b", interp)
    interp.settle("s1", 1, "succeeded")  # no longer the state the cursor carries
    assert handoff.take("run-b", cursor) is None


def test_no_interpreter_without_a_previous_run_or_for_another_one() -> None:
    interp = started()
    handoff.leave("run-c", interp)
    cursor = interp.to_cursor(compact=True)
    assert handoff.take(None, cursor) is None
    assert handoff.take("run-other", cursor) is None
    # The old cursor form is compared in its own form.
    assert handoff.take("run-c", interp.to_cursor()) is interp


def test_only_the_latest_runs_are_kept() -> None:
    interp = started()
    cursor = interp.to_cursor(compact=True)
    for i in range(handoff.CAPACITY + 1):
        handoff.leave(f"run-{i}", interp)
    assert handoff.take("run-0", cursor) is None
    assert handoff.take(f"run-{handoff.CAPACITY}", cursor) is interp
