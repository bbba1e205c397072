"""How the interpreter workflow schedules its activities: retry policies, timeouts, queues.

Pure translation, safe inside the workflow sandbox: a step's retry rule comes from the core
(:mod:`dvt_engine.rules.retries`) and is only written in Temporal's terms here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

from dvt_adapters_temporal.wire import RunInput
from dvt_engine.models.plan import StepSpec
from dvt_engine.rules.retries import retry_policy

# Bookkeeping activities (events, plan) retry until the store is back; they are idempotent.
BOOKKEEPING_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=[
        "PLAN_URI_NOT_ALLOWED",
        "PLAN_INTEGRITY_VALIDATION_FAILED",
        "PLAN_SCHEMA_VERSION_UNSUPPORTED",
        "SCHEMA_VALIDATION_FAILED",
        "PLAN_INVALID",
        "STEP_KIND_UNKNOWN",
        "CAPABILITY_NOT_SUPPORTED",
        "RUN_NOT_FOUND",
        "IDENTIFIER_INVALID",
    ],
)
BOOKKEEPING_TIMEOUT = timedelta(seconds=60)
# Engine attempts beyond the step's own policy, spent only on lost workers (heartbeat timeouts):
# the step runner decides finality from the step's policy, never from this cap.
INFRA_EXTRA_ATTEMPTS = 5
# The runner enforces a step's timeoutMs itself; the activity timeout is only a backstop.
STEP_TIMEOUT_SLACK = timedelta(seconds=60)


def step_retry_policy(step: StepSpec) -> RetryPolicy:
    """The core's retry rule for ``step`` as a Temporal activity retry policy.

    The runner decides finality and the delay (it raises with ``next_retry_delay``); these
    intervals only pace the retries that follow a lost worker.
    """
    retry = retry_policy(step)
    return RetryPolicy(
        initial_interval=timedelta(milliseconds=max(1, retry.initial_interval_ms)),
        backoff_coefficient=retry.backoff_coefficient,
        maximum_interval=timedelta(milliseconds=max(1, retry.max_interval_ms)),
        maximum_attempts=retry.max_attempts + INFRA_EXTRA_ATTEMPTS,
        non_retryable_error_types=list(retry.non_retryable_error_codes),
    )


def step_timeout(step: StepSpec, default_s: float) -> timedelta:
    """The activity's start-to-close timeout: a backstop behind the runner's timeoutMs."""
    if step.timeout_ms:
        return timedelta(milliseconds=step.timeout_ms) + STEP_TIMEOUT_SLACK
    return timedelta(seconds=default_s)


def step_task_queue(step: StepSpec, kind_queues: Mapping[str, str], default: str,
                    class_queues: Mapping[str, str] | None = None) -> str:
    """The task queue a step's activity runs on: its own, its resource class's, its kind's,
    else the default (an unmapped class runs on the default)."""
    by_class = (class_queues or {}).get(step.resource_class) if step.resource_class else None
    return step.task_queue or by_class or kind_queues.get(step.kind) or default


def invocation_json(
    inp: RunInput, plan_params: Mapping[str, Any], spec: dict[str, Any], attempt: int
) -> dict[str, Any]:
    """The shared StepInvocation of a step's logical attempt as JSON (engine attempt 1)."""
    ctx, ref = inp.context, inp.plan_ref
    return {
        "tenantId": ctx["tenantId"], "projectId": ctx["projectId"],
        "environmentId": ctx["environmentId"], "runId": ctx["runId"],
        "planId": ref["planId"], "planVersion": ref["planVersion"], "step": spec,
        "planParams": {**plan_params, **(ctx.get("params") or {})},
        "logicalAttemptId": attempt, "engineAttemptId": 1,
    }
