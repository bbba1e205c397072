"""The projector: a pure function from a run's log to its snapshot (contract §5.3).

``project(header, events)`` builds a snapshot from scratch; ``apply(snapshot, events)`` folds new
events into an existing one. Neither modifies its input. Events are applied in runSeq order; an
event at or below the snapshot's watermark is a duplicate delivery and changes nothing; an
unknown eventType only advances the watermark; an event its state machine forbids is ignored
the same way, so a forced cancel racing a worker can never corrupt a snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from dvt_engine.models.events import Event
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


def project(header: RunHeader, events: Iterable[Event]) -> RunSnapshot:
    """Recompute a run's snapshot from its whole log."""
    return apply(initial_snapshot(header), events)


def apply(snapshot: RunSnapshot, events: Iterable[Event]) -> RunSnapshot:
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

    def fold(self, events: Iterable[Event]) -> None:
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


def _seq(event: Event) -> int:
    if event.run_seq is None:
        raise ValueError("only persisted events (with runSeq) can be projected")
    return event.run_seq


def _in_totals(step: StepSnapshot) -> bool:
    """True when a step adds to the run's artifacts or cost units (see ``_State.view``)."""
    return step.status == StepStatus.SUCCESS and bool(
        step.artifacts or (step.cost is not None and step.cost.units is not None))


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
        self.changed: dict[str, StepSnapshot] = {}
        self.last_event_seq = snapshot.last_event_seq
        self.awaiting_operator = snapshot.substatus == RunSubstatus.AWAITING_OPERATOR

    def step(self, step_id: str) -> StepSnapshot | None:
        found = self.changed.get(step_id)
        if found is not None:
            return found
        index = self.position.get(step_id)
        return None if index is None else self.base.steps[index]

    def forbids(self, event: Event) -> bool:
        step = self.step(event.step_id) if event.step_id is not None else None
        return event_problem(self.get("status"), step, event) is not None

    def get(self, name: str) -> Any:
        return self.run.get(name, getattr(self.base, name))

    def update_step(self, step_id: str, **changes: Any) -> StepSnapshot:
        current = self.step(step_id)
        assert current is not None
        step = current.model_copy(update=changes)
        self.changed[step_id] = step
        return step

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
            listed[self.position[step_id]] = step
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


def _when(event: Event) -> datetime:
    return event.occurred_at or event.emitted_at


def _set_attempt(step: StepSnapshot, attempt: StepAttempt) -> tuple[StepAttempt, ...]:
    kept = [a for a in step.attempts if a.logical_attempt_id != attempt.logical_attempt_id]
    return tuple(sorted([*kept, attempt], key=lambda a: a.logical_attempt_id))


def _error(payload: dict[str, Any]) -> StepError:
    raw = payload.get("error") or {}
    return StepError(
        code=str(raw.get("code", "STEP_FAILED")),
        message=str(raw.get("message", "")),
        retryable=bool(raw.get("retryable", False)),
    )


# --- run events ------------------------------------------------------------------------------


def _run_approved(state: _State, event: Event) -> None:
    state.run["status"] = RunStatus.APPROVED


def _run_started(state: _State, event: Event) -> None:
    state.run["status"] = RunStatus.RUNNING
    state.run["started_at"] = _when(event)
    ref = event.payload.get("engineRunRef")
    state.run["engine_run_ref"] = dict(ref) if isinstance(ref, dict) else None


def _run_paused(state: _State, event: Event) -> None:
    # A pause ends an operator wait; the engine starts a new one (with a new timeout) on resume.
    state.awaiting_operator = False
    state.run["status"] = RunStatus.PAUSED
    ordinal = event.payload.get("ordinal")
    if isinstance(ordinal, int) and not isinstance(ordinal, bool):
        state.run["pause_count"] = max(ordinal, state.get("pause_count"))


def _run_resumed(state: _State, event: Event) -> None:
    state.run["status"] = RunStatus.RUNNING


def _run_awaiting_operator(state: _State, event: Event) -> None:
    state.awaiting_operator = True


def _finish(state: _State, event: Event, status: RunStatus) -> None:
    state.run["status"] = status
    state.run["completed_at"] = _when(event)
    state.awaiting_operator = False


def _run_completed(state: _State, event: Event) -> None:
    _finish(state, event, RunStatus.COMPLETED)


def _run_failed(state: _State, event: Event) -> None:
    _finish(state, event, RunStatus.FAILED)
    p = event.payload
    state.run["failure"] = RunFailure(
        step_id=p.get("stepId"),
        code=str(p.get("code", "RUN_FAILED")),
        message=str(p.get("message", "")),
    )


def _run_cancelled(state: _State, event: Event) -> None:
    _finish(state, event, RunStatus.CANCELLED)


def _signal_accepted(state: _State, event: Event) -> None:
    p = event.payload
    if p.get("noOp"):
        return
    kind = p.get("signalType")
    step_id = p.get("stepId")
    if kind == SignalType.RETRY_STEP and isinstance(step_id, str) and step_id in state.position:
        step = state.step(step_id)
        assert step is not None
        if step.status == StepStatus.FAILED:
            state.update_step(
                step_id,
                status=StepStatus.PENDING,
                substatus=None,
                logical_attempt_id=step.logical_attempt_id + 1,
                engine_attempt_id=None,
                started_at=None,
                completed_at=None,
                output=None,
                artifacts=(),
                cost=None,
                error=None,
            )
            state.awaiting_operator = False
    elif kind == SignalType.SKIP_STEP:
        state.awaiting_operator = False


# --- step events -----------------------------------------------------------------------------


def _step_started(state: _State, event: Event) -> None:
    assert event.step_id is not None
    step = state.step(event.step_id)
    assert step is not None
    state.update_step(
        event.step_id,
        status=StepStatus.RUNNING,
        substatus=None,
        logical_attempt_id=event.logical_attempt_id,
        engine_attempt_id=event.engine_attempt_id,
        started_at=_when(event),
        completed_at=None,
        error=None,
        attempts=_set_attempt(
            step,
            StepAttempt(logical_attempt_id=event.logical_attempt_id, status=StepStatus.RUNNING),
        ),
    )


def _step_awaiting_approval(state: _State, event: Event) -> None:
    assert event.step_id is not None
    state.update_step(event.step_id, substatus=StepSubstatus.AWAITING_APPROVAL)


def _step_completed(state: _State, event: Event) -> None:
    assert event.step_id is not None
    step = state.step(event.step_id)
    assert step is not None
    p = event.payload
    raw_cost = p.get("cost")
    cost = Cost.model_validate(raw_cost) if isinstance(raw_cost, dict) else None
    artifacts = tuple(ArtifactRef.model_validate(a) for a in p.get("artifacts") or ())
    state.update_step(
        event.step_id,
        status=StepStatus.SUCCESS,
        substatus=None,
        engine_attempt_id=event.engine_attempt_id,
        completed_at=_when(event),
        output=p.get("output"),
        artifacts=artifacts,
        cost=cost,
        error=None,
        attempts=_set_attempt(
            step,
            StepAttempt(logical_attempt_id=event.logical_attempt_id, status=StepStatus.SUCCESS),
        ),
    )


def _step_failed(state: _State, event: Event) -> None:
    assert event.step_id is not None
    step = state.step(event.step_id)
    assert step is not None
    error = _error(event.payload)
    state.update_step(
        event.step_id,
        status=StepStatus.FAILED,
        substatus=None,
        engine_attempt_id=event.engine_attempt_id,
        completed_at=_when(event),
        error=error,
        attempts=_set_attempt(
            step,
            StepAttempt(
                logical_attempt_id=event.logical_attempt_id, status=StepStatus.FAILED, error=error
            ),
        ),
    )


def _step_skipped(state: _State, event: Event) -> None:
    assert event.step_id is not None
    reason = event.payload.get("reason")
    state.update_step(
        event.step_id,
        status=StepStatus.SKIPPED,
        substatus=None,
        error=None,
        skip_reason=str(reason) if reason is not None else "skipped",
        completed_at=_when(event),
    )


def _step_expanded(state: _State, event: Event) -> None:
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
