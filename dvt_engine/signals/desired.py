"""The run's desired state: the projected state with accepted, not yet applied signals folded in.

A signal is decided against what the run will be once every signal accepted before it has been
applied, not against the projection alone (which lags the engine). The accepted signals are in
the log already: each SignalAccepted record carries its *basis*, the state it was decided
against. A record is still pending while no event names it as its cause and its basis still
holds in the fold; once the engine applied it, the projection has moved past its basis.
Records written before bases were recorded count as applied. See docs/signals.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dvt_engine.models.events import Event, EventType, SignalBasis, SignalDecisionPayload
from dvt_engine.models.run import RunStatus, StepStatus
from dvt_engine.models.signals import AcceptedSignal, SignalType
from dvt_engine.models.snapshot import RunSnapshot, StepSnapshot
from dvt_engine.projector import apply

#: Signals an engine applies to a running run (APPROVE_RUN and RETRY_RUN are applied at once).
ENGINE_APPLIED = frozenset({
    SignalType.PAUSE, SignalType.RESUME, SignalType.CANCEL, SignalType.RETRY_STEP,
    SignalType.SKIP_STEP, SignalType.APPROVE_STEP, SignalType.CUSTOM,
})
_STEP_SIGNALS = frozenset({SignalType.RETRY_STEP, SignalType.SKIP_STEP, SignalType.APPROVE_STEP,
                           SignalType.CUSTOM})
_DECISIONS = frozenset({EventType.SIGNAL_ACCEPTED, EventType.SIGNAL_REJECTED})


@dataclass(frozen=True)
class DesiredState:
    """The run as it will be once its pending signals are applied."""

    snapshot: RunSnapshot
    #: Accepted signals not applied yet, in decision order.
    pending: tuple[AcceptedSignal, ...] = ()
    #: runSeq of an accepted CANCEL: the run is being cancelled.
    cancel_seq: int | None = None
    #: runSeq of the last accepted signal an engine applies (the next one's predecessor).
    last_signal_seq: int | None = None
    #: The accepted RETRY_RUN that already retried this run, if any (a run is retried once).
    retried_by: AcceptedSignal | None = None


def accepted_signal(event: Event) -> AcceptedSignal | None:
    """The accepted signal a SignalAccepted record holds (None for a no-op or another event)."""
    if event.event_type != EventType.SIGNAL_ACCEPTED or event.run_seq is None:
        return None
    body = SignalDecisionPayload.model_validate(event.payload)
    if body.no_op:
        return None
    return AcceptedSignal(
        signal_id=body.signal_id, type=body.signal_type, tenant_id=event.tenant_id,
        run_id=event.run_id, payload=dict(body.request), actor=body.actor,
        effective_role=body.effective_role, decision_run_seq=event.run_seq,
        logical_attempt_id=body.basis.logical_attempt_id if body.basis else None,
    )


def accepted_signals(
    events: Iterable[Event], *, after_seq: int = 0, upto_seq: int | None = None
) -> list[AcceptedSignal]:
    """Accepted signals an engine applies, recorded in (after_seq, upto_seq], in log order."""
    found: list[AcceptedSignal] = []
    for event in events:
        seq = event.run_seq or 0
        if seq <= after_seq or (upto_seq is not None and seq > upto_seq):
            continue
        signal = accepted_signal(event)
        if signal is not None and signal.type in ENGINE_APPLIED:
            found.append(signal)
    return found


def basis_of(snapshot: RunSnapshot, signal_type: SignalType, step_id: str | None) -> SignalBasis:
    """What a signal of ``signal_type`` is decided against in ``snapshot``."""
    if signal_type in _STEP_SIGNALS:
        step = _step(snapshot, step_id)
        if step is None:
            return SignalBasis(run_status=str(snapshot.status))
        return SignalBasis(
            run_status=str(snapshot.status), step_status=str(step.status),
            step_substatus=str(step.substatus) if step.substatus else None,
            logical_attempt_id=step.logical_attempt_id,
        )
    return SignalBasis(run_status=str(snapshot.status))


def desired_state(snapshot: RunSnapshot, events: Sequence[Event]) -> DesiredState:
    """Fold the accepted, not yet applied signals of ``events`` over ``snapshot``."""
    # A decision record names its own signal as cause; only the engine's effects count.
    caused = {e.caused_by_signal_id for e in events
              if e.caused_by_signal_id and e.event_type not in _DECISIONS}
    state = snapshot
    pending: list[AcceptedSignal] = []
    cancel_seq: int | None = None
    last_signal_seq: int | None = None
    retried_by: AcceptedSignal | None = None
    for event in events:
        signal = accepted_signal(event)
        if signal is None:
            continue
        if signal.type == SignalType.RETRY_RUN:
            retried_by = retried_by or signal
            continue
        if signal.type in ENGINE_APPLIED:
            last_signal_seq = signal.decision_run_seq
        if signal.type == SignalType.CANCEL:
            cancel_seq = cancel_seq or signal.decision_run_seq
            if not snapshot.status.is_terminal:
                pending.append(signal)
            continue
        if signal.signal_id in caused:
            continue
        basis = SignalDecisionPayload.model_validate(event.payload).basis
        if basis is None:
            continue
        folded = _fold(state, signal, basis)
        if folded is not None:
            state = folded
            pending.append(signal)
    return DesiredState(state, tuple(pending), cancel_seq, last_signal_seq, retried_by)


def _fold(state: RunSnapshot, signal: AcceptedSignal, basis: SignalBasis) -> RunSnapshot | None:
    """``state`` after ``signal``, or None when its basis no longer holds (applied or stale)."""
    kind = signal.type
    if kind not in _STEP_SIGNALS:
        if basis.run_status != str(state.status):
            return None
        target = {
            SignalType.PAUSE: RunStatus.PAUSED,
            SignalType.RESUME: RunStatus.RUNNING,
        }.get(kind)
        if kind == SignalType.APPROVE_RUN:
            approve = signal.payload.get("decision", "approve") == "approve"
            target = RunStatus.APPROVED if approve else RunStatus.FAILED
        return None if target is None else state.model_copy(update={"status": target})
    step = _step(state, signal.step_id)
    if step is None or basis != basis_of(state, kind, step.step_id).model_copy(
            update={"run_status": basis.run_status}):
        return None
    if kind == SignalType.RETRY_STEP:
        # A retried step starts at once in a running run, and waits for RESUME in a paused one.
        status = StepStatus.RUNNING if state.status == RunStatus.RUNNING else StepStatus.PENDING
        changed = step.model_copy(update={"status": status, "substatus": None, "error": None,
                                          "logical_attempt_id": step.logical_attempt_id + 1})
    elif kind == SignalType.SKIP_STEP:
        changed = step.model_copy(update={"status": StepStatus.SKIPPED, "substatus": None})
    else:
        changed = step.model_copy(update={"substatus": None})
    steps = tuple(changed if s.step_id == step.step_id else s for s in state.steps)
    return state.model_copy(update={"steps": steps})


def _step(snapshot: RunSnapshot, step_id: str | None) -> StepSnapshot | None:
    for step in snapshot.steps:
        if step.step_id == step_id:
            return step
    return None


def due_signals(
    snapshot: RunSnapshot, events: Sequence[Event], upto_seq: int
) -> list[AcceptedSignal]:
    """Accepted signals decided up to ``upto_seq`` whose effect is not in the log, in order.

    For an engine that keeps no state between moves and rebuilds it from the log (Conductor):
    applying these in order, rather than only the signal it was handed, applies every signal
    in decision order whatever order the deliveries came in. ``snapshot`` is brought up to
    ``events`` first, so both describe the same runSeq.
    """
    newer = [e for e in events if (e.run_seq or 0) > snapshot.last_event_seq]
    current = apply(snapshot, newer) if newer else snapshot
    return [s for s in desired_state(current, events).pending
            if s.decision_run_seq <= upto_seq and s.type in ENGINE_APPLIED]
