"""Idempotency keys (contract §4.3), reproduced bit for bit on every engine.

Repeatable run-level events put a discriminator in the attempt slot so each occurrence gets its
own key while the same history always yields the same keys (see docs/idempotency.md):

- RunPaused / RunResumed: the 1-based ordinal of the pause (the n-th RunPaused and the RunResumed
  that ends it both use n).
- SignalAccepted / SignalRejected: the event key is the signal key itself.
"""

from __future__ import annotations

import hashlib

from dvt_engine.identifiers import KEY_SEPARATOR, validate_identifier

RUN_SCOPE = "RUN"


def _digest(*parts: str) -> str:
    return hashlib.sha256(KEY_SEPARATOR.join(parts).encode("utf-8")).hexdigest()


def _attempt(value: int | None) -> str:
    if value is None:
        return "1"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"attempt discriminator must be an integer >= 1, got {value!r}")
    return str(value)


def event_key(
    run_id: str,
    step_id: str | None,
    logical_attempt_id: int | None,
    event_type: str,
    plan_version: str,
) -> str:
    """sha256_hex(runId | stepIdOrRUN | logicalAttemptIdOr1 | eventType | planVersion)."""
    validate_identifier("runId", run_id)
    validate_identifier("planVersion", plan_version)
    validate_identifier("eventType", event_type)
    step = RUN_SCOPE if step_id is None else validate_identifier("stepId", step_id)
    return _digest(run_id, step, _attempt(logical_attempt_id), event_type, plan_version)


def signal_key(tenant_id: str, run_id: str, signal_id: str) -> str:
    """sha256_hex(tenantId | runId | signalId)."""
    return _digest(
        validate_identifier("tenantId", tenant_id),
        validate_identifier("runId", run_id),
        validate_identifier("signalId", signal_id),
    )


def run_request_key(
    tenant_id: str,
    project_id: str,
    environment_id: str,
    plan_id: str,
    plan_version: str,
    run_request_id: str,
) -> str:
    """sha256_hex(tenantId | projectId | environmentId | planId | planVersion | runRequestId)."""
    return _digest(
        validate_identifier("tenantId", tenant_id),
        validate_identifier("projectId", project_id),
        validate_identifier("environmentId", environment_id),
        validate_identifier("planId", plan_id),
        validate_identifier("planVersion", plan_version),
        validate_identifier("runRequestId", run_request_id),
    )
