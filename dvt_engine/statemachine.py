"""Run and step state machines (contract §3.1, §3.2): which event may follow which state.

The same table serves the writer, which refuses an illegal event before it is appended, and the
projector, which ignores one that reached the log anyway (a forced cancel racing a worker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from dvt_engine.errors import IllegalTransition
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunStatus, StepStatus, StepSubstatus
from dvt_engine.models.snapshot import RunSnapshot, StepSnapshot
from dvt_engine.models.step_index import find_step

# dvt's own run-level event for "nothing can progress until an operator acts" (awaitOperator).
RUN_AWAITING_OPERATOR = "RunAwaitingOperator"

_NOT_TERMINAL = frozenset(s for s in RunStatus if not s.is_terminal)

RUN_EVENT_SOURCES: Mapping[str, frozenset[RunStatus]] = {
    "RunApproved": frozenset({RunStatus.PENDING}),
    "RunStarted": frozenset({RunStatus.PENDING, RunStatus.APPROVED}),
    "RunPaused": frozenset({RunStatus.RUNNING}),
    "RunResumed": frozenset({RunStatus.PAUSED}),
    "RunCompleted": frozenset({RunStatus.RUNNING}),
    "RunFailed": _NOT_TERMINAL,
    "RunCancelled": _NOT_TERMINAL,
    RUN_AWAITING_OPERATOR: frozenset({RunStatus.RUNNING}),
    # A decision record is history, not a state change: accepted even on terminal runs, where
    # it records the refusal.
    "SignalAccepted": frozenset(RunStatus),
    "SignalRejected": frozenset(RunStatus),
}

# Step events need a live run. A step scheduled just before a pause may still report while the
# run is PAUSED: nothing is thrown away (contract §6.4).
_STEP_RUN_STATES = frozenset({RunStatus.RUNNING, RunStatus.PAUSED})

STEP_EVENT_SOURCES: Mapping[str, frozenset[StepStatus]] = {
    # From FAILED only as the next logical attempt (a step stopped by a pause, run again).
    "StepStarted": frozenset({StepStatus.PENDING, StepStatus.FAILED}),
    "StepAwaitingApproval": frozenset({StepStatus.RUNNING}),
    "StepCompleted": frozenset({StepStatus.RUNNING}),
    "StepFailed": frozenset({StepStatus.RUNNING}),
    # FAILED -> SKIPPED is the operator's way out of awaitOperator (documented in docs/);
    # RUNNING -> SKIPPED, of the running attempt, for an open signal wait whose timeout skips
    # it and for a running join loser cancelled when its join is met (plan v1.3).
    "StepSkipped": frozenset({StepStatus.PENDING, StepStatus.FAILED, StepStatus.RUNNING}),
    # A forEach template records its children once it has started (plan v1.3).
    "StepExpanded": frozenset({StepStatus.RUNNING}),
}

KNOWN_EVENT_TYPES = frozenset(RUN_EVENT_SOURCES) | frozenset(STEP_EVENT_SOURCES)


class EventFacts(Protocol):
    """What the rules read of an event (an ``Event``, or a record the projector folds)."""

    @property
    def event_type(self) -> str: ...
    @property
    def step_id(self) -> str | None: ...
    @property
    def logical_attempt_id(self) -> int: ...


class StepFacts(Protocol):
    """What the rules read of a step (a ``StepSnapshot``, or the projector's working copy)."""

    @property
    def step_id(self) -> str: ...
    @property
    def status(self) -> StepStatus: ...
    @property
    def substatus(self) -> StepSubstatus | None: ...
    @property
    def logical_attempt_id(self) -> int: ...


def transition_problem(snapshot: RunSnapshot, event: Event) -> str | None:
    """Why ``event`` may not follow ``snapshot``, or None when it may (or is unknown)."""
    step = _find_step(snapshot, event.step_id) if event.step_id is not None else None
    return event_problem(snapshot.status, step, event)


def event_problem(run_status: RunStatus, step: StepFacts | None, event: EventFacts
                  ) -> str | None:
    """Like transition_problem, given the run's status and the event's step (None if absent)."""
    etype = event.event_type
    if etype in RUN_EVENT_SOURCES:
        if run_status not in RUN_EVENT_SOURCES[etype]:
            return f"{etype} is not allowed while the run is {run_status}"
        return None
    if etype not in STEP_EVENT_SOURCES:
        return None
    if run_status not in _STEP_RUN_STATES:
        return f"{etype} is not allowed while the run is {run_status}"
    if event.step_id is None:
        return f"{etype} needs a stepId"
    if step is None:
        return f"step {event.step_id!r} is not in the plan"
    return _step_problem(step, event)


def _step_problem(step: StepFacts, event: EventFacts) -> str | None:
    etype = event.event_type
    if step.status not in STEP_EVENT_SOURCES[etype]:
        return f"{etype} is not allowed while step {step.step_id!r} is {step.status}"
    if etype == "StepSkipped" and step.status == StepStatus.RUNNING \
            and event.logical_attempt_id != step.logical_attempt_id:
        return (f"StepSkipped is for attempt {event.logical_attempt_id} but step "
                f"{step.step_id!r} is running attempt {step.logical_attempt_id}")
    if etype == "StepStarted" and step.status == StepStatus.FAILED:
        if event.logical_attempt_id != step.logical_attempt_id + 1:
            return f"StepStarted after a failure must start attempt {step.logical_attempt_id + 1}"
        return None
    if etype != "StepSkipped" and event.logical_attempt_id != step.logical_attempt_id:
        return (
            f"{etype} is for attempt {event.logical_attempt_id} but step {step.step_id!r} "
            f"is at attempt {step.logical_attempt_id}"
        )
    if etype == "StepAwaitingApproval" and step.substatus == StepSubstatus.AWAITING_APPROVAL:
        return f"step {step.step_id!r} is already awaiting approval"
    return None


def check_transition(snapshot: RunSnapshot, event: Event) -> None:
    """Raise ILLEGAL_TRANSITION when ``event`` may not follow ``snapshot``."""
    problem = transition_problem(snapshot, event)
    if problem is not None:
        raise IllegalTransition(
            problem,
            details={
                "runId": event.run_id,
                "stepId": event.step_id,
                "eventType": event.event_type,
                "runStatus": str(snapshot.status),
            },
        )


def _find_step(snapshot: RunSnapshot, step_id: str) -> StepSnapshot | None:
    return find_step(snapshot.steps, step_id)
