"""The projector: a pure function from a run's log to its snapshot (contract §5.3).

``project(header, events)`` builds a snapshot from scratch; ``apply(snapshot, events)`` folds new
events into an existing one. Neither modifies its input. Events are applied in runSeq order; an
event at or below the snapshot's watermark is a duplicate delivery and changes nothing; an
unknown eventType only advances the watermark; an event its state machine forbids is ignored
the same way, so a forced cancel racing a worker can never corrupt a snapshot.

Events are validated ``Event`` models or ``StoredEvent`` records read back from a store
(``dvt_engine.stored_events``): the fold reads the same fields of both and gives the same
snapshot. Slightly over 500 lines on purpose: the fold of every event type and the Projection
that keeps it incremental must stay byte-for-byte the same code path.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from pydantic import TypeAdapter

from dvt_engine.models.run import (
    RunHeader,
    RunStatus,
    RunSubstatus,
    StepStatus,
    StepSubstatus,
)
from dvt_engine.models.signals import SignalType
from dvt_engine.models.snapshot import (
    ArtifactRef,
    Cost,
    RunFailure,
    RunSnapshot,
    StepAttempt,
    StepError,
    StepSnapshot,
)
from dvt_engine.statemachine import RUN_AWAITING_OPERATOR, event_problem


class FoldedEvent(Protocol):
    """What the projector reads of an event: an ``Event``, or a ``StoredEvent`` read back."""

    @property
    def run_seq(self) -> int | None: ...
    @property
    def run_id(self) -> str: ...
    @property
    def step_id(self) -> str | None: ...
    @property
    def event_type(self) -> str: ...
    @property
    def logical_attempt_id(self) -> int: ...
    @property
    def engine_attempt_id(self) -> int: ...
    @property
    def emitted_at(self) -> datetime | str: ...
    @property
    def occurred_at(self) -> datetime | str | None: ...
    @property
    def payload(self) -> dict[str, Any]: ...


# Parses a stored event's time exactly as ``Event`` validation does (same type, same zone).
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def initial_snapshot(header: RunHeader) -> RunSnapshot:
    """The snapshot of a registered run before any event: PENDING, every step PENDING."""
    return RunSnapshot(
        run_id=header.run_id,
        tenant_id=header.tenant_id,
        project_id=header.project_id,
        environment_id=header.environment_id,
        plan_id=header.plan_id,
        plan_version=header.plan_version,
        steps=tuple(StepSnapshot(step_id=s.step_id) for s in header.steps),
        original_run_id=header.original_run_id,
    )


def project(header: RunHeader, events: Iterable[FoldedEvent]) -> RunSnapshot:
    """Recompute a run's snapshot from its whole log."""
    return apply(initial_snapshot(header), events)


def apply(snapshot: RunSnapshot, events: Iterable[FoldedEvent]) -> RunSnapshot:
    """Fold ``events`` into ``snapshot`` and return the new snapshot."""
    projection = Projection(snapshot)
    projection.fold(events)
    return projection.snapshot()


class Projection:
    """A snapshot that events are folded into one after another (what ``apply`` does).

    A store that keeps one per run pays per event for the steps the event changes, not for the
    whole run: the step index is built once, a new snapshot shares every unchanged step of the
    previous one, and the run's artifacts and cost are summed again only when a changed step
    takes part in them. The snapshots are the ones ``apply`` gives for the same events.
    """

    def __init__(self, snapshot: RunSnapshot) -> None:
        self._state = _State(snapshot)
        self._view: RunSnapshot | None = None

    @property
    def last_event_seq(self) -> int:
        """The runSeq of the last event folded (or the starting snapshot's watermark)."""
        return self._state.last_event_seq

    def fold(self, events: Iterable[FoldedEvent]) -> None:
        """Apply ``events`` in runSeq order, as ``apply`` does."""
        state = self._state
        run_id = state.base.run_id
        for event in sorted(events, key=_seq):
            seq = _seq(event)
            if seq <= state.last_event_seq:
                continue
            state.last_event_seq = seq
            self._view = None
            if event.run_id != run_id or state.forbids(event):
                continue
            handler = _HANDLERS.get(event.event_type)
            if handler is not None:
                handler(state, event)

    def snapshot(self) -> RunSnapshot:
        """The snapshot after every event folded so far."""
        if self._view is None:
            self._view = self._state.view()
        return self._view


def _seq(event: FoldedEvent) -> int:
    if event.run_seq is None:
        raise ValueError("only persisted events (with runSeq) can be projected")
    return event.run_seq


def _in_totals(step: StepSnapshot | _Step) -> bool:
    """True when a step adds to the run's artifacts or cost units (see ``_State.view``)."""
    return step.status == StepStatus.SUCCESS and bool(
        step.artifacts or (step.cost is not None and step.cost.units is not None))


class _Step:
    """A step changed since the last view: its snapshot's fields, mutable, one model per view.

    Folding a run's whole log touches each step several times; a model copy per event was a
    third of a rebuild. ``model()`` gives what copying ``origin`` with every update would.
    """

    __slots__ = ("artifacts", "attempts", "completed_at", "cost", "engine_attempt_id", "error",
                 "logical_attempt_id", "origin", "output", "skip_reason", "started_at",
                 "status", "step_id", "substatus")

    def __init__(self, origin: StepSnapshot) -> None:
        self.origin = origin
        self.step_id: str = origin.step_id
        self.status: StepStatus = origin.status
        self.substatus: StepSubstatus | None = origin.substatus
        self.logical_attempt_id: int = origin.logical_attempt_id
        self.engine_attempt_id: int | None = origin.engine_attempt_id
        self.started_at: datetime | None = origin.started_at
        self.completed_at: datetime | None = origin.completed_at
        self.output: Any = origin.output
        self.artifacts: tuple[ArtifactRef, ...] = origin.artifacts
        self.cost: Cost | None = origin.cost
        self.error: StepError | None = origin.error
        self.skip_reason: str | None = origin.skip_reason
        self.attempts: tuple[StepAttempt, ...] = origin.attempts

    def model(self) -> StepSnapshot:
        """The step as a snapshot model (``origin`` with every field set here)."""
        return self.origin.model_copy(update={
            "status": self.status,
            "substatus": self.substatus,
            "logical_attempt_id": self.logical_attempt_id,
            "engine_attempt_id": self.engine_attempt_id,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "output": self.output,
            "artifacts": self.artifacts,
            "cost": self.cost,
            "error": self.error,
            "skip_reason": self.skip_reason,
            "attempts": self.attempts,
        })


class _State:
    """Mutable working state of a Projection; never escapes it.

    ``base`` is the last snapshot viewed; ``changed`` holds the steps updated since, and
    ``run`` every run-level change since the starting snapshot. ``exact`` says whether
    ``base``'s artifacts and cost were computed here, so they can be reused.
    """

    def __init__(self, snapshot: RunSnapshot) -> None:
        self.base = snapshot
        self.exact = False
        self.run: dict[str, Any] = {}
        self.position: dict[str, int] = {s.step_id: i for i, s in enumerate(snapshot.steps)}
        self.changed: dict[str, _Step] = {}
        self.last_event_seq = snapshot.last_event_seq
        self.awaiting_operator = snapshot.substatus == RunSubstatus.AWAITING_OPERATOR

    def step(self, step_id: str) -> StepSnapshot | _Step | None:
        found = self.changed.get(step_id)
        if found is not None:
            return found
        index = self.position.get(step_id)
        return None if index is None else self.base.steps[index]

    def forbids(self, event: FoldedEvent) -> bool:
        step = self.step(event.step_id) if event.step_id is not None else None
        return event_problem(self.get("status"), step, event) is not None

    def get(self, name: str) -> Any:
        return self.run.get(name, getattr(self.base, name))

    def touch(self, step_id: str) -> _Step:
        """The step's mutable working copy (made on the first change since the last view)."""
        found = self.changed.get(step_id)
        if found is None:
            found = self.changed[step_id] = _Step(self.base.steps[self.position[step_id]])
        return found

    def insert_steps(self, after: str, step_ids: list[str]) -> None:
        """Add PENDING steps right after ``after`` (a forEach template's children)."""
        listed = list(self._steps())
        at = self.position[after] + 1
        new = [StepSnapshot(step_id=s) for s in step_ids if s not in self.position]
        listed[at:at] = new
        self.base = self.base.model_copy(update={"steps": tuple(listed)})
        self.changed, self.exact = {}, False
        self.position = {s.step_id: i for i, s in enumerate(listed)}

    def _steps(self) -> tuple[StepSnapshot, ...]:
        if not self.changed:
            return self.base.steps
        # Copying through a list is the cheapest way to replace items of a long tuple.
        listed = list(self.base.steps)
        for step_id, step in self.changed.items():
            listed[self.position[step_id]] = step.model()
        return tuple(listed)

    def _totals_unchanged(self) -> bool:
        base = self.base.steps
        return self.exact and not any(
            _in_totals(step) or _in_totals(base[self.position[step_id]])
            for step_id, step in self.changed.items())

    def view(self) -> RunSnapshot:
        steps = self._steps()
        status = self.get("status")
        if self._totals_unchanged():
            artifacts = self.base.artifacts
            units = self.base.cost.units
        else:
            artifacts, units = _totals(steps)
        started_at: datetime | None = self.get("started_at")
        completed_at: datetime | None = self.get("completed_at")
        duration_ms = None
        if started_at is not None and completed_at is not None:
            duration_ms = max(0, int((completed_at - started_at).total_seconds() * 1000))
        viewed = self.base.model_copy(
            update={
                **self.run,
                "status": status,
                "substatus": _run_substatus(status, steps, self.awaiting_operator),
                "last_event_seq": self.last_event_seq,
                "steps": steps,
                "artifacts": artifacts,
                "cost": Cost(units=units, duration_ms=duration_ms),
                "duration_ms": duration_ms,
            }
        )
        # The next view starts from this one; run-level changes stay in ``run`` (they are
        # applied on top of ``base`` again, which gives the same values).
        self.base, self.exact, self.changed = viewed, True, {}
        return viewed


def _totals(steps: tuple[StepSnapshot, ...]) -> tuple[tuple[ArtifactRef, ...], float | None]:
    """The run's artifacts and cost units: those of its SUCCESS steps, in plan order."""
    artifacts: list[ArtifactRef] = []
    units = 0.0
    any_units = False
    for step in steps:
        if step.status == StepStatus.SUCCESS:
            artifacts.extend(step.artifacts)
            if step.cost is not None and step.cost.units is not None:
                units += step.cost.units
                any_units = True
    return tuple(artifacts), (units if any_units else None)


def _run_substatus(
    status: RunStatus, steps: tuple[StepSnapshot, ...], awaiting_operator: bool
) -> RunSubstatus | None:
    if status == RunStatus.PAUSED:
        draining = any(
            s.status == StepStatus.RUNNING and s.substatus != StepSubstatus.AWAITING_APPROVAL
            for s in steps
        )
        return RunSubstatus.DRAINING if draining else None
    if status == RunStatus.RUNNING and awaiting_operator:
        return RunSubstatus.AWAITING_OPERATOR
    return None


def _when(event: FoldedEvent) -> datetime:
    value = event.occurred_at or event.emitted_at
    return value if isinstance(value, datetime) else _DATETIME.validate_python(value)


@functools.lru_cache(maxsize=256)
def _attempt(logical_attempt_id: int, status: StepStatus) -> StepAttempt:
    """An attempt without an error (models are immutable: one instance serves every step)."""
    return StepAttempt(logical_attempt_id=logical_attempt_id, status=status)


def _set_attempt(step: StepSnapshot | _Step, attempt: StepAttempt) -> tuple[StepAttempt, ...]:
    attempt_id = attempt.logical_attempt_id
    if all(a.logical_attempt_id == attempt_id for a in step.attempts):
        return (attempt,)  # the usual case: no other attempt to keep in order
    kept = [a for a in step.attempts if a.logical_attempt_id != attempt_id]
    return tuple(sorted([*kept, attempt], key=lambda a: a.logical_attempt_id))


def _error(payload: dict[str, Any]) -> StepError:
    raw = payload.get("error") or {}
    return StepError(
        code=str(raw.get("code", "STEP_FAILED")),
        message=str(raw.get("message", "")),
        retryable=bool(raw.get("retryable", False)),
    )


# --- run events ------------------------------------------------------------------------------


def _run_approved(state: _State, event: FoldedEvent) -> None:
    state.run["status"] = RunStatus.APPROVED


def _run_started(state: _State, event: FoldedEvent) -> None:
    state.run["status"] = RunStatus.RUNNING
    state.run["started_at"] = _when(event)
    ref = event.payload.get("engineRunRef")
    state.run["engine_run_ref"] = dict(ref) if isinstance(ref, dict) else None


def _run_paused(state: _State, event: FoldedEvent) -> None:
    # A pause ends an operator wait; the engine starts a new one (with a new timeout) on resume.
    state.awaiting_operator = False
    state.run["status"] = RunStatus.PAUSED
    ordinal = event.payload.get("ordinal")
    if isinstance(ordinal, int) and not isinstance(ordinal, bool):
        state.run["pause_count"] = max(ordinal, state.get("pause_count"))


def _run_resumed(state: _State, event: FoldedEvent) -> None:
    state.run["status"] = RunStatus.RUNNING


def _run_awaiting_operator(state: _State, event: FoldedEvent) -> None:
    state.awaiting_operator = True


def _finish(state: _State, event: FoldedEvent, status: RunStatus) -> None:
    state.run["status"] = status
    state.run["completed_at"] = _when(event)
    state.awaiting_operator = False


def _run_completed(state: _State, event: FoldedEvent) -> None:
    _finish(state, event, RunStatus.COMPLETED)


def _run_failed(state: _State, event: FoldedEvent) -> None:
    _finish(state, event, RunStatus.FAILED)
    p = event.payload
    state.run["failure"] = RunFailure(
        step_id=p.get("stepId"),
        code=str(p.get("code", "RUN_FAILED")),
        message=str(p.get("message", "")),
    )


def _run_cancelled(state: _State, event: FoldedEvent) -> None:
    _finish(state, event, RunStatus.CANCELLED)


def _signal_accepted(state: _State, event: FoldedEvent) -> None:
    p = event.payload
    if p.get("noOp"):
        return
    kind = p.get("signalType")
    step_id = p.get("stepId")
    if kind == SignalType.RETRY_STEP and isinstance(step_id, str) and step_id in state.position:
        step = state.step(step_id)
        assert step is not None
        if step.status == StepStatus.FAILED:
            retried = state.touch(step_id)
            retried.status = StepStatus.PENDING
            retried.substatus = None
            retried.logical_attempt_id = step.logical_attempt_id + 1
            retried.engine_attempt_id = None
            retried.started_at = None
            retried.completed_at = None
            retried.output = None
            retried.artifacts = ()
            retried.cost = None
            retried.error = None
            state.awaiting_operator = False
    elif kind == SignalType.SKIP_STEP:
        state.awaiting_operator = False


# --- step events -----------------------------------------------------------------------------


def _step_started(state: _State, event: FoldedEvent) -> None:
    assert event.step_id is not None
    step = state.touch(event.step_id)
    step.status = StepStatus.RUNNING
    step.substatus = None
    step.logical_attempt_id = event.logical_attempt_id
    step.engine_attempt_id = event.engine_attempt_id
    step.started_at = _when(event)
    step.completed_at = None
    step.error = None
    step.attempts = _set_attempt(step, _attempt(event.logical_attempt_id, StepStatus.RUNNING))


def _step_awaiting_approval(state: _State, event: FoldedEvent) -> None:
    assert event.step_id is not None
    state.touch(event.step_id).substatus = StepSubstatus.AWAITING_APPROVAL


def _step_completed(state: _State, event: FoldedEvent) -> None:
    assert event.step_id is not None
    p = event.payload
    raw_cost = p.get("cost")
    cost = Cost.model_validate(raw_cost) if isinstance(raw_cost, dict) else None
    artifacts = tuple(ArtifactRef.model_validate(a) for a in p.get("artifacts") or ())
    step = state.touch(event.step_id)
    step.status = StepStatus.SUCCESS
    step.substatus = None
    step.engine_attempt_id = event.engine_attempt_id
    step.completed_at = _when(event)
    step.output = p.get("output")
    step.artifacts = artifacts
    step.cost = cost
    step.error = None
    step.attempts = _set_attempt(step, _attempt(event.logical_attempt_id, StepStatus.SUCCESS))


def _step_failed(state: _State, event: FoldedEvent) -> None:
    assert event.step_id is not None
    error = _error(event.payload)
    step = state.touch(event.step_id)
    step.status = StepStatus.FAILED
    step.substatus = None
    step.engine_attempt_id = event.engine_attempt_id
    step.completed_at = _when(event)
    step.error = error
    step.attempts = _set_attempt(step, StepAttempt(
        logical_attempt_id=event.logical_attempt_id, status=StepStatus.FAILED, error=error))


def _step_skipped(state: _State, event: FoldedEvent) -> None:
    assert event.step_id is not None
    reason = event.payload.get("reason")
    step = state.touch(event.step_id)
    step.status = StepStatus.SKIPPED
    step.substatus = None
    step.error = None
    step.skip_reason = str(reason) if reason is not None else "skipped"
    step.completed_at = _when(event)


def _step_expanded(state: _State, event: FoldedEvent) -> None:
    assert event.step_id is not None
    children = event.payload.get("children") or []
    state.insert_steps(event.step_id, [str(c) for c in children])


_HANDLERS = {
    "RunApproved": _run_approved,
    "RunStarted": _run_started,
    "RunPaused": _run_paused,
    "RunResumed": _run_resumed,
    RUN_AWAITING_OPERATOR: _run_awaiting_operator,
    "RunCompleted": _run_completed,
    "RunFailed": _run_failed,
    "RunCancelled": _run_cancelled,
    "SignalAccepted": _signal_accepted,
    "StepStarted": _step_started,
    "StepAwaitingApproval": _step_awaiting_approval,
    "StepCompleted": _step_completed,
    "StepFailed": _step_failed,
    "StepSkipped": _step_skipped,
    "StepExpanded": _step_expanded,
}
