"""Signals carry the final failures the log showed when they were decided (decision order 6)."""

from __future__ import annotations

from signal_helpers import new_run, request

from dvt_engine.interpreter import RunInterpreter
from dvt_engine.models.events import EventType
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import StepStatus
from dvt_engine.models.signals import SignalType
from dvt_engine.models.snapshot import StepError, StepSnapshot
from dvt_engine.rules.failure import final_failures
from dvt_engine.signals import SignalService
from dvt_engine.stores.memory import MemoryRunStateStore

PLAN = ExecutionPlan.model_validate({
    "metadata": {"schemaVersion": "v1.2", "planId": "p", "planVersion": "1.0.0"},
    "steps": [
        {"stepId": "once", "kind": "noop"},
        {"stepId": "thrice", "kind": "noop",
         "retry": {"maxAttempts": 3, "initialIntervalMs": 10, "maxIntervalMs": 10}},
    ],
})


def failed(step_id: str, *, retryable: bool, engine_attempt: int = 1,
           attempt: int = 1) -> StepSnapshot:
    return StepSnapshot(step_id=step_id, status=StepStatus.FAILED, logical_attempt_id=attempt,
                        engine_attempt_id=engine_attempt,
                        error=StepError(code="BOOM", message="boom", retryable=retryable))


def test_a_failure_the_engine_will_retry_is_not_final() -> None:
    steps = [failed("once", retryable=True), failed("thrice", retryable=True)]
    assert final_failures(PLAN, steps) == {"once": 1}
    assert final_failures(PLAN, [failed("thrice", retryable=True, engine_attempt=3,
                                        attempt=2)]) == {"thrice": 2}
    assert final_failures(PLAN, [failed("thrice", retryable=False)]) == {"thrice": 1}


def test_without_the_plan_only_an_unretryable_error_is_final() -> None:
    steps = [failed("once", retryable=True), failed("thrice", retryable=False)]
    assert final_failures(None, steps) == {"thrice": 1}
    done = StepSnapshot(step_id="once", status=StepStatus.SUCCESS)
    assert final_failures(None, [done]) == {}


def test_the_interpreter_names_a_failure_it_has_not_been_fed() -> None:
    interp = RunInterpreter(plan=PLAN)
    interp.begin()
    assert interp.steps["once"].in_flight
    assert interp.unseen_failure({"once": 1}) == "once"
    assert interp.unseen_failure({"once": 2}) is None  # another attempt: not this one's news
    interp.settle("once", 1, "failed", StepError(code="BOOM", message="boom"), None)
    assert interp.unseen_failure({"once": 1}) is None


async def test_an_accepted_signal_carries_the_logged_final_failures() -> None:
    store = MemoryRunStateStore()
    service = SignalService(store)
    run = await new_run(store)
    await run.start()
    await run.await_gate()
    verdict = await service.decide(request(run, SignalType.PAUSE))
    assert verdict.accepted is not None
    assert verdict.accepted.failed_steps == {}
    await run.fail_step("a")
    verdict = await service.decide(request(run, SignalType.APPROVE_STEP,
                                           {"stepId": "gate", "decision": "approve"}))
    assert verdict.accepted is not None
    assert verdict.accepted.failed_steps == {"a": 1}
    # Not part of the record: the log holds the failure itself.
    recorded = (await run.decisions())[-1]
    assert recorded.event_type == EventType.SIGNAL_ACCEPTED
    assert "failedSteps" not in recorded.payload
    assert "failed_steps" not in recorded.payload
