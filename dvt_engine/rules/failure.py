"""Failure policies (contract §3.4): failFast and awaitOperator.

- failFast (the default): after a final step failure nothing new starts; running steps finish,
  then RunFailed names the first failing step. A waiting approval gate cannot finish by itself,
  so a failing run cancels it (:func:`gates_to_cancel`).
- awaitOperator: independent branches keep running; when nothing else can progress the run
  waits for RETRY_STEP, SKIP_STEP or CANCEL, or fails once ``operatorTimeoutMs`` passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dvt_engine.errors import ErrorCode
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import StepStatus
from dvt_engine.models.snapshot import StepError, StepSnapshot
from dvt_engine.models.step_index import find_step
from dvt_engine.rules.retries import is_final_failure

FAIL_FAST = "failFast"
AWAIT_OPERATOR = "awaitOperator"
#: Why a failing failFast run cancels a waiting gate (the cancelled step's error says it).
FAIL_FAST_GATE_REASON = "run failing (failFast)"
OPERATOR_TIMEOUT_MESSAGE = "no operator acted within operatorTimeoutMs"


def fails_fast(plan: ExecutionPlan) -> bool:
    """True when the plan's failure policy is failFast."""
    return plan.metadata.failure_policy == FAIL_FAST


def awaits_operator(plan: ExecutionPlan) -> bool:
    """True when a final failure leaves the run waiting for an operator (awaitOperator)."""
    return plan.metadata.failure_policy == AWAIT_OPERATOR


def failing_fast(plan: ExecutionPlan, failure: Mapping[str, Any] | None) -> bool:
    """True when a failFast run has a final step failure: it starts nothing new."""
    return failure is not None and fails_fast(plan)


def run_failure(step_id: str, error: StepError | None) -> dict[str, Any]:
    """The run's failure record (RunFailed's payload) for a step's final failure."""
    err = error or StepError(code=str(ErrorCode.STEP_FAILED), message="step failed")
    return {"stepId": step_id, "code": err.code, "message": err.message}


def operator_timeout_failure(failure: Mapping[str, Any] | None) -> dict[str, Any]:
    """RunFailed's payload when no operator acted within operatorTimeoutMs."""
    return {"stepId": (failure or {}).get("stepId"), "code": "OPERATOR_TIMEOUT",
            "message": OPERATOR_TIMEOUT_MESSAGE}


def gates_to_cancel(
    plan: ExecutionPlan,
    failure: Mapping[str, Any] | None,
    *,
    ending: bool,
    waiting_gates: Iterable[str],
) -> tuple[str, ...]:
    """The waiting gates a failing failFast run cancels (none when the run is already ending)."""
    if ending or not failing_fast(plan, failure):
        return ()
    return tuple(waiting_gates)


def keeps_failed_attempt(plan: ExecutionPlan, run_terminal: bool) -> bool:
    """True when a step's final failure may still be retried by RETRY_STEP in this run."""
    return awaits_operator(plan) and not run_terminal


def final_failures(plan: ExecutionPlan | None,
                   steps: Iterable[StepSnapshot]) -> dict[str, int]:
    """Steps whose current logical attempt the log shows failed for good, with that attempt.

    A signal decided on such a log is applied by an engine only once the engine has learnt
    those failures too (``RunInterpreter.unseen_failure``): a failing failFast run starts
    nothing new, so an approval decided after the failure must not start the gate's
    dependants on an engine that hears of the failure later than the log did. Without the
    plan (its retry policies), only an error raised as not retryable counts as final.
    """
    found: dict[str, int] = {}
    for step in steps:
        if step.status != StepStatus.FAILED or step.error is None:
            continue
        spec = None if plan is None else find_step(plan.steps, step.step_id)
        if spec is None:
            final = not step.error.retryable
        else:
            final = is_final_failure(spec, step.error, step.engine_attempt_id or 1)
        if final:
            found[step.step_id] = step.logical_attempt_id
    return found
