"""RunInterpreter: the deterministic decision core of a run, shared by every engine.

It holds no I/O, no clock and no randomness, so it runs unchanged inside a Temporal workflow,
an asyncio task of the reference engine, or a Conductor decision worker. An engine feeds it what
happened (a step settled, a signal was accepted, a timer fired) and carries out the commands it
returns, in order. Because the same inputs always give the same commands, every engine writes the
same events in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dvt_engine.models.events import EventType
from dvt_engine.models.plan import ExecutionPlan, StepSpec
from dvt_engine.models.run import RunStatus, StepStatus, StepSubstatus
from dvt_engine.models.signals import SignalType
from dvt_engine.models.snapshot import RunSnapshot, StepError
from dvt_engine.scheduler import ready_steps
from dvt_engine.statemachine import RUN_AWAITING_OPERATOR

StepSettlement = Literal["succeeded", "failed", "cancelled", "refused"]


# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartStep:
    """Run one logical attempt of a step through the step runner."""

    step_id: str
    logical_attempt_id: int


@dataclass(frozen=True)
class CancelSteps:
    """Ask running steps (and waiting gates) to stop."""

    step_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class WriteRunEvent:
    """Append a run-level event; ``discriminator`` fills the key's attempt slot."""

    event_type: str
    payload: Mapping[str, Any]
    discriminator: int | None = None
    caused_by_signal_id: str | None = None


@dataclass(frozen=True)
class WriteStepEvent:
    """Append a step event that the engine itself produces (StepSkipped)."""

    event_type: str
    step_id: str
    logical_attempt_id: int
    payload: Mapping[str, Any]
    caused_by_signal_id: str | None = None


@dataclass(frozen=True)
class ResolveGate:
    """Complete (approve) or fail (reject) a waiting approval gate."""

    step_id: str
    logical_attempt_id: int
    approve: bool
    approver: str
    comment: str | None
    signal_id: str | None


@dataclass(frozen=True)
class ExpireGate:
    """Fail a waiting approval gate with APPROVAL_TIMEOUT."""

    step_id: str
    logical_attempt_id: int


@dataclass(frozen=True)
class StartTimer:
    """Start a durable timer; the engine calls ``timer_fired(name)`` when it fires."""

    name: str
    delay_ms: int


@dataclass(frozen=True)
class Finish:
    """Write the run's terminal event; nothing follows it."""

    event_type: str
    payload: Mapping[str, Any]


Command = (
    StartStep
    | CancelSteps
    | WriteRunEvent
    | WriteStepEvent
    | ResolveGate
    | ExpireGate
    | StartTimer
    | Finish
)

OPERATOR_TIMER_PREFIX = "operator:"
FAIL_FAST_GATE_REASON = "run failing (failFast)"
GATE_TIMER_PREFIX = "gate:"


# --- state ---------------------------------------------------------------------------------


@dataclass
class StepState:
    """What the interpreter tracks per step."""

    status: StepStatus = StepStatus.PENDING
    logical_attempt_id: int = 1
    in_flight: bool = False
    awaiting_approval: bool = False


@dataclass
class RunInterpreter:
    """Deterministic run state machine; see the module docstring."""

    plan: ExecutionPlan
    status: RunStatus = RunStatus.RUNNING
    pause_ordinal: int = 0
    operator_ordinal: int = 0
    awaiting_operator: bool = False
    cancel_reason: str | None = None
    cancel_requested: bool = False
    failure: dict[str, Any] | None = None
    steps: dict[str, StepState] = field(default_factory=dict)
    cancel_in_flight_on_pause: bool = False
    paused_cancellations: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for spec in self.plan.steps:
            self.steps.setdefault(spec.step_id, StepState())

    # --- queries ------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        """True once the terminal command has been issued."""
        return self.status.is_terminal

    def statuses(self) -> dict[str, StepStatus]:
        """Current status of every step."""
        return {sid: st.status for sid, st in self.steps.items()}

    def in_flight(self) -> list[str]:
        """Steps running now (including waiting gates), in plan order."""
        return [s.step_id for s in self.plan.steps if self.steps[s.step_id].in_flight]

    def spec(self, step_id: str) -> StepSpec:
        """The plan's spec of a step."""
        return self.plan.step(step_id)

    # --- inputs -------------------------------------------------------------------------
    def begin(self) -> list[Command]:
        """Commands that start the run: RunStarted is written by the engine, then steps."""
        return self.advance()

    def step_awaiting_approval(self, step_id: str) -> list[Command]:
        """A gate wrote StepAwaitingApproval; start its timeout timer if it has one."""
        state = self.steps[step_id]
        state.awaiting_approval = True
        commands: list[Command] = []
        timeout = self.spec(step_id).timeout_ms
        if timeout is not None and not self.is_finished:
            name = f"{GATE_TIMER_PREFIX}{step_id}:{state.logical_attempt_id}"
            commands.append(StartTimer(name, timeout))
        if (
            self.plan.metadata.failure_policy == "failFast"
            and self.failure is not None
            and not self.is_finished
            and not self.cancel_requested
        ):
            # The run began failing while this gate was opening; a gate cannot finish by itself.
            commands.append(CancelSteps((step_id,), FAIL_FAST_GATE_REASON))
        return commands

    def step_settled(
        self,
        step_id: str,
        logical_attempt_id: int,
        outcome: StepSettlement,
        error: StepError | None = None,
    ) -> list[Command]:
        """A logical attempt ended (its final event, if any, is already in the log)."""
        state = self.steps[step_id]
        if logical_attempt_id != state.logical_attempt_id or not state.in_flight:
            return []  # a late report of an attempt the run has moved past
        state.in_flight = False
        state.awaiting_approval = False
        requeue = step_id in self.paused_cancellations
        self.paused_cancellations.discard(step_id)
        if outcome == "cancelled" and requeue and not self.cancel_requested:
            # Stopped by a pause (cancelInFlightOnPause): a new logical attempt runs on resume.
            state.status = StepStatus.PENDING
            state.logical_attempt_id += 1
            return self.advance()
        if outcome == "succeeded":
            state.status = StepStatus.SUCCESS
        elif outcome in ("failed", "cancelled"):
            state.status = StepStatus.FAILED
            if outcome == "failed" and self.failure is None:
                err = error or StepError(code="STEP_FAILED", message="step failed")
                self.failure = {"stepId": step_id, "code": err.code, "message": err.message}
        elif outcome == "refused":
            # The log refused StepStarted (the step was skipped meanwhile): trust the log.
            state.status = StepStatus.SKIPPED
        commands: list[Command] = []
        if (
            outcome == "failed"
            and self.plan.metadata.failure_policy == "failFast"
            and not self.cancel_requested
        ):
            gates = tuple(
                s for s in self.in_flight() if self.steps[s].awaiting_approval
            )
            if gates:
                commands.append(CancelSteps(gates, FAIL_FAST_GATE_REASON))
        return commands + self.advance()

    def signal_accepted(
        self,
        signal_type: SignalType | str,
        payload: Mapping[str, Any],
        *,
        signal_id: str | None = None,
        actor_id: str = "operator",
    ) -> list[Command]:
        """Apply an accepted signal; returns what the engine must do."""
        if self.is_finished:
            return []
        kind = SignalType(signal_type)
        step_id = payload.get("stepId")
        if kind == SignalType.PAUSE:
            if self.status != RunStatus.RUNNING:
                return []
            self.status = RunStatus.PAUSED
            self.pause_ordinal += 1
            # The operator wait (if any) ends here; resume starts a new one with a new timeout.
            self.awaiting_operator = False
            event = WriteRunEvent(
                EventType.RUN_PAUSED,
                {"ordinal": self.pause_ordinal, "reason": payload.get("reason")},
                discriminator=self.pause_ordinal,
                caused_by_signal_id=signal_id,
            )
            if not self.cancel_in_flight_on_pause:
                return [event]
            working = tuple(s for s in self.in_flight() if not self.steps[s].awaiting_approval)
            self.paused_cancellations.update(working)
            return [event, CancelSteps(working, "run paused")] if working else [event]
        if kind == SignalType.RESUME:
            if self.status != RunStatus.PAUSED:
                return []
            self.status = RunStatus.RUNNING
            resumed = WriteRunEvent(
                EventType.RUN_RESUMED,
                {"ordinal": self.pause_ordinal},
                discriminator=self.pause_ordinal,
                caused_by_signal_id=signal_id,
            )
            return [resumed, *self.advance()]
        if kind == SignalType.CANCEL:
            return self.cancel(payload.get("reason"), signal_id=signal_id)
        if not isinstance(step_id, str) or step_id not in self.steps:
            return []
        state = self.steps[step_id]
        if kind == SignalType.RETRY_STEP:
            if state.status != StepStatus.FAILED or state.in_flight:
                return []
            state.status = StepStatus.PENDING
            state.logical_attempt_id += 1
            self.awaiting_operator = False
            if self.failure is not None and self.failure.get("stepId") == step_id:
                self.failure = None
            return self.advance()
        if kind == SignalType.SKIP_STEP:
            if state.status not in (StepStatus.PENDING, StepStatus.FAILED) or state.in_flight:
                return []
            state.status = StepStatus.SKIPPED
            self.awaiting_operator = False
            if self.failure is not None and self.failure.get("stepId") == step_id:
                self.failure = None
            reason = payload.get("reason") or f"skipped by {actor_id}"
            skipped = WriteStepEvent(
                EventType.STEP_SKIPPED,
                step_id,
                state.logical_attempt_id,
                {"reason": reason},
                caused_by_signal_id=signal_id,
            )
            return [skipped, *self.advance()]
        if kind == SignalType.APPROVE_STEP:
            if not (state.in_flight and state.awaiting_approval):
                return []
            state.awaiting_approval = False
            return [
                ResolveGate(
                    step_id,
                    state.logical_attempt_id,
                    approve=payload.get("decision") == "approve",
                    approver=actor_id,
                    comment=payload.get("comment"),
                    signal_id=signal_id,
                )
            ]
        return []

    def cancel(self, reason: str | None = None, *, signal_id: str | None = None) -> list[Command]:
        """Cooperative cancel: stop running steps, then write RunCancelled once they settle."""
        if self.is_finished or self.cancel_requested:
            return []
        self.cancel_requested = True
        self.cancel_reason = reason
        commands: list[Command] = []
        running = tuple(self.in_flight())
        if running:
            commands.append(CancelSteps(running, reason or "run cancelled"))
        return commands + self.advance()

    def timer_fired(self, name: str) -> list[Command]:
        """A timer started by StartTimer fired."""
        if self.is_finished:
            return []
        if name.startswith(OPERATOR_TIMER_PREFIX):
            ordinal = int(name[len(OPERATOR_TIMER_PREFIX):])
            if self.awaiting_operator and ordinal == self.operator_ordinal:
                failure = self.failure or {}
                return self._finish(
                    EventType.RUN_FAILED,
                    {
                        "stepId": failure.get("stepId"),
                        "code": "OPERATOR_TIMEOUT",
                        "message": "no operator acted within operatorTimeoutMs",
                    },
                )
            return []
        if name.startswith(GATE_TIMER_PREFIX):
            step_id, _, attempt = name[len(GATE_TIMER_PREFIX):].rpartition(":")
            state = self.steps.get(step_id)
            if (
                state is not None
                and state.in_flight
                and state.awaiting_approval
                and str(state.logical_attempt_id) == attempt
            ):
                state.awaiting_approval = False
                return [ExpireGate(step_id, state.logical_attempt_id)]
        return []

    # --- the scheduling rule ------------------------------------------------------------
    def advance(self) -> list[Command]:
        """Start what can start, or finish the run when nothing else can happen."""
        if self.is_finished:
            return []
        running = self.in_flight()
        if self.cancel_requested:
            if running:
                return []
            return self._finish(EventType.RUN_CANCELLED, {"reason": self.cancel_reason})
        fail_fast = self.plan.metadata.failure_policy == "failFast"
        if fail_fast and self.failure is not None:
            if running:
                return []
            return self._finish(EventType.RUN_FAILED, dict(self.failure))
        if self.status == RunStatus.PAUSED:
            return []
        statuses = self.statuses()
        commands: list[Command] = []
        for step_id in ready_steps(self.plan.steps, statuses, running):
            state = self.steps[step_id]
            state.status = StepStatus.RUNNING
            state.in_flight = True
            commands.append(StartStep(step_id, state.logical_attempt_id))
        if commands or running:
            return commands
        if all(s.satisfies_dependency for s in statuses.values()):
            succeeded = sum(1 for s in statuses.values() if s == StepStatus.SUCCESS)
            skipped = sum(1 for s in statuses.values() if s == StepStatus.SKIPPED)
            return self._finish(
                EventType.RUN_COMPLETED, {"succeeded": succeeded, "skipped": skipped}
            )
        if not self.awaiting_operator:
            # awaitOperator: nothing can progress until RETRY_STEP, SKIP_STEP or CANCEL.
            self.awaiting_operator = True
            self.operator_ordinal += 1
            failed = [sid for sid, st in statuses.items() if st == StepStatus.FAILED]
            return [
                WriteRunEvent(
                    RUN_AWAITING_OPERATOR,
                    {"ordinal": self.operator_ordinal, "failedSteps": failed},
                    discriminator=self.operator_ordinal,
                ),
                StartTimer(
                    f"{OPERATOR_TIMER_PREFIX}{self.operator_ordinal}",
                    self.plan.metadata.operator_timeout_ms,
                ),
            ]
        return []

    def _finish(self, event_type: str, payload: Mapping[str, Any]) -> list[Command]:
        self.status = {
            EventType.RUN_COMPLETED: RunStatus.COMPLETED,
            EventType.RUN_FAILED: RunStatus.FAILED,
            EventType.RUN_CANCELLED: RunStatus.CANCELLED,
        }[EventType(event_type)]
        return [Finish(event_type, payload)]

    # --- persistence (continue-as-new, recovery) ----------------------------------------
    def to_cursor(self) -> dict[str, Any]:
        """A compact, JSON-safe cursor of everything but the plan."""
        return {
            "status": str(self.status),
            "pauseOrdinal": self.pause_ordinal,
            "operatorOrdinal": self.operator_ordinal,
            "awaitingOperator": self.awaiting_operator,
            "cancelRequested": self.cancel_requested,
            "cancelReason": self.cancel_reason,
            "failure": self.failure,
            "cancelInFlightOnPause": self.cancel_in_flight_on_pause,
            "pausedCancellations": sorted(self.paused_cancellations),
            "steps": {
                sid: [str(st.status), st.logical_attempt_id, st.in_flight, st.awaiting_approval]
                for sid, st in self.steps.items()
                if st.status != StepStatus.PENDING or st.logical_attempt_id != 1
            },
        }

    @classmethod
    def from_cursor(cls, plan: ExecutionPlan, cursor: Mapping[str, Any]) -> RunInterpreter:
        """Rebuild an interpreter from ``to_cursor()`` output."""
        interp = cls(
            plan=plan,
            status=RunStatus(cursor["status"]),
            pause_ordinal=int(cursor["pauseOrdinal"]),
            operator_ordinal=int(cursor["operatorOrdinal"]),
            awaiting_operator=bool(cursor["awaitingOperator"]),
            cancel_requested=bool(cursor["cancelRequested"]),
            cancel_reason=cursor.get("cancelReason"),
            failure=cursor.get("failure"),
            cancel_in_flight_on_pause=bool(cursor.get("cancelInFlightOnPause", False)),
            paused_cancellations=set(cursor.get("pausedCancellations", ())),
        )
        for sid, (status, attempt, in_flight, awaiting) in cursor["steps"].items():
            interp.steps[sid] = StepState(StepStatus(status), int(attempt), bool(in_flight),
                                          bool(awaiting))
        return interp

    @classmethod
    def from_snapshot(cls, plan: ExecutionPlan, snapshot: RunSnapshot) -> RunInterpreter:
        """Rebuild from the store's truth; RUNNING steps are reported as in flight."""
        interp = cls(plan=plan)
        approved = snapshot.status == RunStatus.APPROVED
        interp.status = RunStatus.RUNNING if approved else snapshot.status
        interp.pause_ordinal = snapshot.pause_count
        interp.awaiting_operator = snapshot.substatus == "AWAITING_OPERATOR"
        for step in snapshot.steps:
            interp.steps[step.step_id] = StepState(
                status=step.status,
                logical_attempt_id=step.logical_attempt_id,
                in_flight=step.status == StepStatus.RUNNING,
                awaiting_approval=step.substatus == StepSubstatus.AWAITING_APPROVAL,
            )
            if step.status == StepStatus.FAILED and interp.failure is None and step.error:
                interp.failure = {"stepId": step.step_id, "code": step.error.code,
                                  "message": step.error.message}
        return interp


def commands_of(kind: type[Command], commands: Iterable[Command]) -> list[Any]:
    """The commands of one type, in order (a convenience for engines and tests)."""
    return [c for c in commands if isinstance(c, kind)]
