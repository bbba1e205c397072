"""The state check of contract §6.2 rule 4: may this signal act on the run as it will be?

Pure: it reads the run's header and its *desired* snapshot (the projection with every accepted,
not yet applied signal folded in: :mod:`dvt_engine.signals.desired`) and says "apply",
"accepted no-op" or "refused with code X". An engine applies an accepted signal through the
state machine, which refuses anything that became illegal since (a step that started on its own
between the decision and its application).
"""

from __future__ import annotations

from dataclasses import dataclass

from dvt_engine.errors import ErrorCode
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import RunHeader, RunStatus, StepStatus, StepSubstatus
from dvt_engine.models.signals import SignalType
from dvt_engine.models.snapshot import RunSnapshot, StepSnapshot
from dvt_engine.rules.signals import APPROVAL_KIND, waits_for

#: Run states in which steps exist and can be steered.
_STARTED = frozenset({RunStatus.RUNNING, RunStatus.PAUSED})
#: Terminal states a RETRY_RUN may start over from.
RETRYABLE_RUN_STATES = frozenset({RunStatus.FAILED, RunStatus.CANCELLED})
_STEP_SIGNALS = frozenset({SignalType.RETRY_STEP, SignalType.SKIP_STEP, SignalType.APPROVE_STEP,
                           SignalType.CUSTOM})


@dataclass(frozen=True)
class StateVerdict:
    """The state check's answer: refused (with a code), an accepted no-op, or to be applied."""

    error_code: ErrorCode | None = None
    message: str | None = None
    no_op: bool = False

    @property
    def accepted(self) -> bool:
        """True when the signal passes the state check."""
        return self.error_code is None


def _refuse(code: ErrorCode, message: str) -> StateVerdict:
    return StateVerdict(error_code=code, message=message)


_APPLY = StateVerdict()


def check_state(
    header: RunHeader,
    snapshot: RunSnapshot,
    signal_type: SignalType,
    *,
    step_id: str | None = None,
    approve: bool = True,
    cancel_seq: int | None = None,
    plan: ExecutionPlan | None = None,
    signal_name: str | None = None,
    retried_as: str | None = None,
) -> StateVerdict:
    """Decide ``signal_type`` against the run's desired snapshot (see docs/signals.md).

    ``cancel_seq`` is the runSeq of an accepted CANCEL: the run is being cancelled. ``plan``
    and ``signal_name`` are a CUSTOM signal's run plan and name, and ``step_id`` the waiting
    step it completes (None: none waits). ``retried_as`` is the runId an earlier accepted
    RETRY_RUN of this run started.
    """
    status = snapshot.status
    if signal_type == SignalType.RETRY_RUN:
        return _retry_run(status, retried_as)
    if status.is_terminal:
        return _refuse(ErrorCode.RUN_TERMINAL, f"run is {status} and accepts no more signals")
    if cancel_seq is not None:
        if signal_type == SignalType.CANCEL:
            return StateVerdict(no_op=True, message="run is already being cancelled")
        return _refuse(
            ErrorCode.RUN_TERMINAL,
            f"run is being cancelled (CANCEL accepted at runSeq {cancel_seq}) and accepts "
            "no more signals",
        )
    if signal_type == SignalType.CUSTOM:
        return _custom(snapshot, plan, step_id, signal_name)
    if signal_type in _STEP_SIGNALS:
        if signal_type == SignalType.APPROVE_STEP and _waits_for_signal(header, snapshot,
                                                                         step_id):
            return _refuse(ErrorCode.STEP_NOT_AWAITING_APPROVAL,
                           f"step {step_id!r} waits for a custom signal, not for an approval")
        return _step_signal(snapshot, signal_type, step_id)
    if signal_type == SignalType.PAUSE:
        if status == RunStatus.PAUSED:
            return StateVerdict(no_op=True, message="run is already paused")
        if status != RunStatus.RUNNING:
            return _not_started(status, signal_type)
        return _APPLY
    if signal_type == SignalType.RESUME:
        if status == RunStatus.RUNNING:
            return StateVerdict(no_op=True, message="run is already running")
        if status != RunStatus.PAUSED:
            return _not_started(status, signal_type)
        return _APPLY
    if signal_type == SignalType.CANCEL:
        return _APPLY
    if signal_type == SignalType.APPROVE_RUN:
        return _approve_run(header, status, approve)
    return _refuse(ErrorCode.ILLEGAL_TRANSITION, f"{signal_type} is not handled")


def _not_started(status: RunStatus, signal_type: SignalType) -> StateVerdict:
    return _refuse(
        ErrorCode.ILLEGAL_TRANSITION,
        f"run is {status} and has not started; {signal_type} acts on a started run",
    )


def _retry_run(status: RunStatus, retried_as: str | None) -> StateVerdict:
    if status in RETRYABLE_RUN_STATES and retried_as is not None:
        # Two operators retrying the same failed run at once must not start the plan twice.
        return _refuse(
            ErrorCode.RUN_ALREADY_RETRIED,
            f"run was already retried as {retried_as!r}; retry that run if it failed too",
        )
    if status in RETRYABLE_RUN_STATES:
        return _APPLY
    if status.is_terminal:
        return _refuse(
            ErrorCode.RUN_TERMINAL,
            f"run is {status}; only a FAILED or CANCELLED run can be retried",
        )
    return _refuse(
        ErrorCode.ILLEGAL_TRANSITION,
        f"run is {status}; RETRY_RUN needs a FAILED or CANCELLED run (cancel it first)",
    )


def _approve_run(header: RunHeader, status: RunStatus, approve: bool) -> StateVerdict:
    if not header.requires_approval:
        return _refuse(ErrorCode.ILLEGAL_TRANSITION, "the run's plan does not require approval")
    if status == RunStatus.PENDING:
        return _APPLY
    if status == RunStatus.APPROVED and approve:
        return StateVerdict(no_op=True, message="run is already approved")
    return _refuse(
        ErrorCode.ILLEGAL_TRANSITION,
        f"run is {status}; APPROVE_RUN is only possible while the run is PENDING",
    )


def _step_signal(
    snapshot: RunSnapshot, signal_type: SignalType, step_id: str | None
) -> StateVerdict:
    step = _find_step(snapshot, step_id)
    if step is None:
        return _refuse(ErrorCode.STEP_NOT_FOUND, f"step {step_id!r} is not in the run's plan")
    if signal_type == SignalType.RETRY_STEP:
        if step.status != StepStatus.FAILED:
            return _refuse(
                ErrorCode.STEP_NOT_RETRYABLE,
                f"step {step.step_id!r} is {step.status}; only a FAILED step can be retried",
            )
    elif signal_type == SignalType.SKIP_STEP:
        if step.status not in (StepStatus.PENDING, StepStatus.FAILED):
            return _refuse(
                ErrorCode.STEP_TERMINAL,
                f"step {step.step_id!r} is {step.status}; only a PENDING or FAILED step "
                "can be skipped",
            )
    elif not (
        step.status == StepStatus.RUNNING and step.substatus == StepSubstatus.AWAITING_APPROVAL
    ):
        return _refuse(
            ErrorCode.STEP_NOT_AWAITING_APPROVAL,
            f"step {step.step_id!r} is {step.status} and not waiting for approval",
        )
    if snapshot.status not in _STARTED:
        return _not_started(snapshot.status, signal_type)
    return _APPLY


def _waits_for_signal(header: RunHeader, snapshot: RunSnapshot, step_id: str | None) -> bool:
    """True for an open gate whose step is no approval step: only a signal wait (plan v1.3)
    opens a gate without being one."""
    step = _find_step(snapshot, step_id)
    if step is None or step.substatus != StepSubstatus.AWAITING_APPROVAL:
        return False
    for outline in header.steps:
        if outline.step_id == step_id:
            return outline.kind != APPROVAL_KIND
    return False


def _custom(snapshot: RunSnapshot, plan: ExecutionPlan | None, step_id: str | None,
            name: str | None) -> StateVerdict:
    step = _find_step(snapshot, step_id)
    waits = (plan is not None and step is not None and step.step_id in plan.step_ids
             and waits_for(plan.step(step.step_id), str(name)))
    if not waits or step is None or not (
            step.status == StepStatus.RUNNING
            and step.substatus == StepSubstatus.AWAITING_APPROVAL):
        where = f"step {step_id!r} is not waiting for it" if step_id else "no step waits for it"
        return _refuse(ErrorCode.SIGNAL_NOT_AWAITED, f"signal {name!r}: {where} now")
    if snapshot.status not in _STARTED:
        return _not_started(snapshot.status, SignalType.CUSTOM)
    return _APPLY


def _find_step(snapshot: RunSnapshot, step_id: str | None) -> StepSnapshot | None:
    if step_id is None:
        return None
    for step in snapshot.steps:
        if step.step_id == step_id:
            return step
    return None
