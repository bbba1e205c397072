"""Engine retries of one logical attempt (contract §3.3).

A failure is final when it is not retryable (its code is in ``retry.nonRetryableErrorCodes``,
or it was raised as not retryable) or the step has used its last engine attempt; otherwise the
engine waits ``initialInterval x coefficient^(n-2)`` (capped at maxInterval) before attempt n.
A step without a ``retry`` policy gets the defaults below: one attempt.
"""

from __future__ import annotations

from dvt_engine.models.plan import RetryPolicy, StepSpec
from dvt_engine.models.snapshot import StepError

#: The policy of a step that names none (the plan model's defaults: a single attempt).
DEFAULT_RETRY = RetryPolicy()


def retry_policy(step: StepSpec) -> RetryPolicy:
    """The retry policy that applies to ``step``."""
    return step.retry if step.retry is not None else DEFAULT_RETRY


def is_retryable_code(step: StepSpec, code: str) -> bool:
    """False when the step's policy lists ``code`` as never retryable."""
    return code not in retry_policy(step).non_retryable_error_codes


def is_final_failure(step: StepSpec, error: StepError, engine_attempt: int) -> bool:
    """True when a failure of engine attempt ``engine_attempt`` ends the logical attempt."""
    return not error.retryable or engine_attempt >= retry_policy(step).max_attempts


def delay_before_attempt_ms(step: StepSpec, engine_attempt: int) -> int:
    """How long the engine waits before engine attempt ``engine_attempt`` of ``step``."""
    return retry_policy(step).delay_before_attempt_ms(engine_attempt)
