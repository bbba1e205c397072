"""Approval gates (contract §6.3): how long a gate waits, and the name of its timer."""

from __future__ import annotations

from dvt_engine.models.plan import StepSpec

GATE_TIMER_PREFIX = "gate:"


def gate_timeout_ms(step: StepSpec) -> int | None:
    """How long a gate waits: a signal wait's ``waitForSignal.timeoutMs``, else the step's
    timeoutMs, else ``params.timeoutMs``."""
    if step.wait_for_signal is not None and step.wait_for_signal.timeout_ms is not None:
        return step.wait_for_signal.timeout_ms
    if step.timeout_ms is not None:
        return step.timeout_ms
    value = step.params.get("timeoutMs")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def gate_timer_name(step_id: str, logical_attempt_id: int) -> str:
    """The timer that expires one logical attempt of a gate."""
    return f"{GATE_TIMER_PREFIX}{step_id}:{logical_attempt_id}"


def parse_gate_timer(name: str) -> tuple[str, int] | None:
    """(stepId, logicalAttemptId) of a gate timer's name, or None for another timer."""
    if not name.startswith(GATE_TIMER_PREFIX):
        return None
    step_id, _, attempt = name[len(GATE_TIMER_PREFIX):].rpartition(":")
    return (step_id, int(attempt)) if attempt.isdigit() else None
