"""The run interpreter: deterministic commands for every policy and signal."""

from __future__ import annotations

from typing import Any

from dvt_engine.interpreter import (
    CancelSteps,
    ExpireGate,
    Finish,
    ResolveGate,
    RunInterpreter,
    StartStep,
    StartTimer,
    WriteRunEvent,
    WriteStepEvent,
    commands_of,
)
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import RunStatus, StepStatus
from dvt_engine.models.snapshot import StepError


def plan(steps: list[dict[str, Any]], **meta: Any) -> ExecutionPlan:
    return ExecutionPlan.model_validate(
        {"metadata": {"planId": "p", "planVersion": "1", "schemaVersion": "v1.2", **meta},
         "steps": steps}
    )


DIAMOND = [
    {"stepId": "a", "kind": "noop"},
    {"stepId": "b", "kind": "noop", "dependsOn": ["a"]},
    {"stepId": "c", "kind": "noop", "dependsOn": ["a"]},
    {"stepId": "d", "kind": "noop", "dependsOn": ["b", "c"]},
]


def started(commands: list[Any]) -> list[str]:
    return [c.step_id for c in commands_of(StartStep, commands)]


def test_diamond_runs_in_dependency_order_with_parallel_middle() -> None:
    interp = RunInterpreter(plan(DIAMOND))
    assert started(interp.begin()) == ["a"]
    assert started(interp.step_settled("a", 1, "succeeded")) == ["b", "c"]
    assert interp.step_settled("c", 1, "succeeded") == []
    assert started(interp.step_settled("b", 1, "succeeded")) == ["d"]
    final = interp.step_settled("d", 1, "succeeded")
    assert final == [Finish("RunCompleted", {"succeeded": 4, "skipped": 0})]
    assert interp.is_finished


def test_fail_fast_lets_running_steps_finish_then_fails() -> None:
    interp = RunInterpreter(plan([{"stepId": "x", "kind": "noop"},
                                  {"stepId": "y", "kind": "noop"},
                                  {"stepId": "z", "kind": "noop", "dependsOn": ["y"]}]))
    assert started(interp.begin()) == ["x", "y"]
    err = StepError(code="BAD_SQL", message="boom")
    assert interp.step_settled("x", 1, "failed", err) == []  # y still running
    commands = interp.step_settled("y", 1, "succeeded")
    assert commands == [Finish("RunFailed", {"stepId": "x", "code": "BAD_SQL", "message": "boom"})]
    assert interp.steps["z"].status == StepStatus.PENDING


def test_await_operator_then_retry_step_completes() -> None:
    interp = RunInterpreter(plan([{"stepId": "x", "kind": "noop"},
                                  {"stepId": "y", "kind": "noop", "dependsOn": ["x"]}],
                                 failurePolicy="awaitOperator", operatorTimeoutMs=5000))
    interp.begin()
    commands = interp.step_settled("x", 1, "failed", StepError(code="E", message="m"))
    assert commands_of(WriteRunEvent, commands)[0].event_type == "RunAwaitingOperator"
    assert commands_of(StartTimer, commands) == [StartTimer("operator:1", 5000)]
    assert not interp.is_finished
    retry = interp.signal_accepted("RETRY_STEP", {"stepId": "x"}, signal_id="s1")
    assert retry == [StartStep("x", 2)]
    assert interp.timer_fired("operator:1") == []  # the wait it timed has ended
    assert started(interp.step_settled("x", 2, "succeeded")) == ["y"]
    assert commands_of(Finish, interp.step_settled("y", 1, "succeeded"))[0].event_type == (
        "RunCompleted"
    )


def test_operator_timeout_fails_the_run() -> None:
    interp = RunInterpreter(plan([{"stepId": "x", "kind": "noop"}],
                                 failurePolicy="awaitOperator"))
    interp.begin()
    interp.step_settled("x", 1, "failed", StepError(code="E", message="m"))
    finish = interp.timer_fired("operator:1")
    message = "no operator acted within operatorTimeoutMs"
    assert finish == [
        Finish("RunFailed", {"stepId": "x", "code": "OPERATOR_TIMEOUT", "message": message})
    ]


def test_skip_failed_step_under_await_operator_releases_dependents() -> None:
    interp = RunInterpreter(plan([{"stepId": "x", "kind": "noop"},
                                  {"stepId": "y", "kind": "noop", "dependsOn": ["x"]}],
                                 failurePolicy="awaitOperator"))
    interp.begin()
    interp.step_settled("x", 1, "failed", StepError(code="E", message="m"))
    commands = interp.signal_accepted("SKIP_STEP", {"stepId": "x", "reason": "known bad"})
    assert commands[0] == WriteStepEvent("StepSkipped", "x", 1, {"reason": "known bad"})
    assert started(commands) == ["y"]


def test_pause_stops_scheduling_and_resume_continues() -> None:
    interp = RunInterpreter(plan([{"stepId": "a", "kind": "noop"},
                                  {"stepId": "b", "kind": "noop", "dependsOn": ["a"]}]))
    interp.begin()
    paused = interp.signal_accepted("PAUSE", {"reason": "maintenance"}, signal_id="p1")
    assert paused == [WriteRunEvent("RunPaused", {"ordinal": 1, "reason": "maintenance"}, 1, "p1")]
    assert interp.step_settled("a", 1, "succeeded") == []  # nothing new while paused
    assert interp.signal_accepted("PAUSE", {}) == []  # no-op
    resumed = interp.signal_accepted("RESUME", {}, signal_id="r1")
    assert resumed[0] == WriteRunEvent("RunResumed", {"ordinal": 1}, 1, "r1")
    assert started(resumed) == ["b"]
    again = interp.signal_accepted("PAUSE", {})
    assert commands_of(WriteRunEvent, again)[0].discriminator == 2


def test_approval_gate_resolution_and_timeout() -> None:
    interp = RunInterpreter(plan([{"stepId": "gate", "kind": "approval", "timeoutMs": 1000}]))
    interp.begin()
    assert interp.step_awaiting_approval("gate") == [StartTimer("gate:gate:1", 1000)]
    resolve = interp.signal_accepted("APPROVE_STEP", {"stepId": "gate", "decision": "approve",
                                                      "comment": "ok"}, actor_id="ann")
    assert resolve == [ResolveGate("gate", 1, True, "ann", "ok", None)]
    assert interp.timer_fired("gate:gate:1") == []

    other = RunInterpreter(plan([{"stepId": "gate", "kind": "approval", "timeoutMs": 1000}]))
    other.begin()
    other.step_awaiting_approval("gate")
    assert other.timer_fired("gate:gate:1") == [ExpireGate("gate", 1)]


def test_cancel_stops_running_steps_then_finishes() -> None:
    interp = RunInterpreter(plan([{"stepId": "slow", "kind": "sleep"},
                                  {"stepId": "next", "kind": "noop", "dependsOn": ["slow"]}]))
    interp.begin()
    commands = interp.cancel("stop")
    assert commands == [CancelSteps(("slow",), "stop")]
    assert interp.cancel("again") == []
    finish = interp.step_settled("slow", 1, "cancelled")
    assert finish == [Finish("RunCancelled", {"reason": "stop"})]
    assert interp.status == RunStatus.CANCELLED
    assert interp.signal_accepted("RESUME", {}) == []


def test_cursor_round_trip_preserves_decisions() -> None:
    p = plan(DIAMOND)
    interp = RunInterpreter(p)
    interp.begin()
    interp.step_settled("a", 1, "succeeded")
    interp.signal_accepted("PAUSE", {})
    clone = RunInterpreter.from_cursor(p, interp.to_cursor())
    assert clone.to_cursor() == interp.to_cursor()
    assert clone.step_settled("b", 1, "succeeded") == interp.step_settled("b", 1, "succeeded")


def test_late_report_of_old_attempt_is_ignored() -> None:
    interp = RunInterpreter(plan([{"stepId": "x", "kind": "noop"}],
                                 failurePolicy="awaitOperator"))
    interp.begin()
    interp.step_settled("x", 1, "failed", StepError(code="E", message="m"))
    interp.signal_accepted("RETRY_STEP", {"stepId": "x"})
    assert interp.step_settled("x", 1, "succeeded") == []
    assert interp.steps["x"].status == StepStatus.RUNNING


def test_gate_opening_after_a_fail_fast_failure_is_cancelled() -> None:
    interp = RunInterpreter(plan([{"stepId": "x", "kind": "noop"},
                                  {"stepId": "gate", "kind": "approval"}]))
    assert started(interp.begin()) == ["x", "gate"]
    assert interp.step_settled("x", 1, "failed", StepError(code="E", message="m")) == []
    commands = interp.step_awaiting_approval("gate")
    assert commands == [CancelSteps(("gate",), "run failing (failFast)")]
    assert commands_of(Finish, interp.step_settled("gate", 1, "cancelled"))[0].event_type == (
        "RunFailed"
    )


# --- questions engines ask the core -------------------------------------------------------

GATE_AND_SIBLING = [
    {"stepId": "prep", "kind": "noop"},
    {"stepId": "gate", "kind": "approval", "dependsOn": ["prep"]},
    {"stepId": "side", "kind": "noop", "dependsOn": ["prep"]},
    {"stepId": "publish", "kind": "noop", "dependsOn": ["gate", "side"]},
]


def test_would_start_matches_what_advance_starts() -> None:
    interp = RunInterpreter(plan(DIAMOND))
    assert interp.startable() == ["a"]
    assert interp.would_start("a")
    assert not interp.would_start("b")
    interp.begin()
    interp.step_settled("a", 1, "succeeded")
    assert interp.startable() == []  # b and c are running now
    paused = RunInterpreter(plan(DIAMOND))
    paused.signal_accepted("PAUSE", {})
    assert paused.startable() == []
    assert paused.advance() == []


def test_fail_fast_starts_nothing_new() -> None:
    interp = RunInterpreter(plan([{"stepId": "x", "kind": "noop"},
                                  {"stepId": "y", "kind": "noop"},
                                  {"stepId": "z", "kind": "noop", "dependsOn": ["y"]}]))
    interp.begin()
    interp.step_settled("x", 1, "failed", StepError(code="E", message="m"))
    interp.steps["y"].status, interp.steps["y"].in_flight = StepStatus.SUCCESS, False
    assert not interp.would_start("z")


def test_settle_maps_runner_outcomes() -> None:
    interp = RunInterpreter(plan([{"stepId": "x", "kind": "noop"}]))
    interp.begin()
    commands = interp.settle("x", 1, "awaiting_approval")  # not a settlement: a failure
    assert commands_of(Finish, commands) == [
        Finish("RunFailed", {"stepId": "x", "code": "STEP_FAILED",
                             "message": "awaiting_approval"})]


def test_owed_cancels_waiting_gates_of_a_rebuilt_failing_run() -> None:
    interp = RunInterpreter(plan(GATE_AND_SIBLING))
    interp.begin()
    interp.step_settled("prep", 1, "succeeded")
    interp.step_awaiting_approval("gate")
    assert interp.owed() == []  # nothing failed
    interp.failure = {"stepId": "side", "code": "E", "message": "m"}
    assert interp.owed() == [CancelSteps(("gate",), "run failing (failFast)")]


def test_marked_started_steps_hold_a_failing_run_open() -> None:
    interp = RunInterpreter(plan(GATE_AND_SIBLING))
    interp.begin()
    interp.step_settled("prep", 1, "succeeded")
    interp.step_awaiting_approval("gate")
    # Rebuilt without "side" (its start was carried out, not yet logged): the engine marks it.
    interp.steps["side"].status, interp.steps["side"].in_flight = StepStatus.PENDING, False
    interp.mark_started(["side"])
    resolve = interp.signal_accepted("APPROVE_STEP", {"stepId": "gate", "decision": "reject"})
    assert commands_of(ResolveGate, resolve)[0].approve is False
    err = StepError(code="APPROVAL_REJECTED", message="no")
    assert interp.step_settled("gate", 1, "failed", err) == []  # side still due
    final = interp.step_settled("side", 1, "succeeded")
    assert commands_of(Finish, final)[0].payload["stepId"] == "gate"


def test_gate_params_timeout_starts_its_timer_and_durable_timers_come_from_the_log() -> None:
    from datetime import UTC, datetime

    from dvt_engine.models.events import Event

    interp = RunInterpreter(plan([{"stepId": "g", "kind": "approval",
                                   "params": {"timeoutMs": 1500}}]))
    interp.begin()
    assert interp.step_awaiting_approval("g") == [StartTimer("gate:g:1", 1500)]
    opened = Event.model_construct(event_type="StepAwaitingApproval", step_id="g",
                                   logical_attempt_id=1,
                                   emitted_at=datetime(2026, 1, 1, tzinfo=UTC))
    [(name, due)] = interp.durable_timers([opened])
    assert name == "gate:g:1"
    assert due == datetime(2026, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    assert interp.timer_fired(name) == [ExpireGate("g", 1)]
