"""RunInterpreter: the deterministic decision core of a run, shared by every engine.

It holds no I/O, no clock and no randomness, so it runs unchanged inside a Temporal workflow,
an asyncio task of the reference engine, or a Conductor decision worker. An engine feeds it what
happened (a step settled, a signal was accepted, a timer fired) and carries out the commands it
returns, in order. Because the same inputs always give the same commands, every engine writes the
same events in the same order.

About 840 lines on purpose: the decisions and the incremental bookkeeping they read (ready
set, in-flight steps, and for plan v1.3 the outputs conditions read and forEach expansions)
change together; the rules themselves (limits, joins, conditions, forEach included) live in
dvt_engine/rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dvt_engine.commands import CancelSteps as CancelSteps
from dvt_engine.commands import Command as Command
from dvt_engine.commands import ExpireGate as ExpireGate
from dvt_engine.commands import Finish as Finish
from dvt_engine.commands import ResolveGate as ResolveGate
from dvt_engine.commands import StartStep as StartStep
from dvt_engine.commands import StartTimer as StartTimer
from dvt_engine.commands import WriteRunEvent as WriteRunEvent
from dvt_engine.commands import WriteStepEvent as WriteStepEvent
from dvt_engine.commands import commands_of as commands_of
from dvt_engine.models.events import Event, EventType
from dvt_engine.models.plan import ExecutionPlan, StepSpec
from dvt_engine.models.run import RunStatus, StepStatus, StepSubstatus
from dvt_engine.models.signals import SignalType
from dvt_engine.models.snapshot import RunSnapshot, StepError
from dvt_engine.rules import cancel as cancel_rules
from dvt_engine.rules import concurrency, joins, scheduling
from dvt_engine.rules import conditions as condition_rules
from dvt_engine.rules import failure as failure_rules
from dvt_engine.rules import foreach as foreach_rules
from dvt_engine.rules import gates as gate_rules
from dvt_engine.rules import pause as pause_rules
from dvt_engine.rules import signals as signal_rules
from dvt_engine.rules.failure import FAIL_FAST_GATE_REASON as FAIL_FAST_GATE_REASON
from dvt_engine.rules.gates import GATE_TIMER_PREFIX as GATE_TIMER_PREFIX
from dvt_engine.rules.settlement import (
    NOT_STARTED,
    records_failure,
    settlement_of,
    step_status_after,
)
from dvt_engine.rules.settlement import StepSettlement as StepSettlement
from dvt_engine.scheduler import ReadySteps
from dvt_engine.statemachine import RUN_AWAITING_OPERATOR

OPERATOR_TIMER_PREFIX = "operator:"


# --- state ---------------------------------------------------------------------------------


@dataclass
class StepState:
    """What the interpreter tracks per step."""

    status: StepStatus = StepStatus.PENDING
    logical_attempt_id: int = 1
    in_flight: bool = False
    awaiting_approval: bool = False

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        # The interpreter that holds this state keeps its ready set and in-flight set current.
        owner = self.__dict__.get("_owner")
        if owner is not None and name in _WATCHED:
            owner[0]._observe(owner[1], self)


_WATCHED = frozenset({"status", "in_flight"})


def _new_state(status: StepStatus = StepStatus.PENDING, attempt: int = 1, in_flight: bool = False,
               awaiting: bool = False) -> StepState:
    """A StepState not yet held by an interpreter, built without the change hook (a rebuild
    makes one per step of the plan)."""
    state = StepState.__new__(StepState)
    state.__dict__.update(status=status, logical_attempt_id=attempt, in_flight=in_flight,
                          awaiting_approval=awaiting)
    return state


class _StepStates(dict[str, StepState]):
    """The interpreter's step states: a state put here reports its changes to the interpreter."""

    def __init__(self, interp: RunInterpreter) -> None:
        super().__init__()
        self._interp = interp

    def __setitem__(self, step_id: str, state: StepState) -> None:
        super().__setitem__(step_id, state)
        object.__setattr__(state, "_owner", (self._interp, step_id))
        self._interp._observe(step_id, state)

    def adopt(self, step_id: str, state: StepState) -> None:
        """Put a state whose status the ready set was built with (no status change to report)."""
        super().__setitem__(step_id, state)
        object.__setattr__(state, "_owner", (self._interp, step_id))
        if state.in_flight and step_id in self._interp._ready.position:
            self._interp._in_flight.add(step_id)


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
    #: Outputs of the steps that some condition reads (plan v1.3), by step id.
    outputs: dict[str, Any] = field(default_factory=dict)
    #: The run's own params (RunContext.params): conditions see them over the plan's params.
    run_params: dict[str, Any] = field(default_factory=dict)
    #: forEach templates expanded so far (plan v1.3): their items, by template id.
    expansions: dict[str, list[Any]] = field(default_factory=dict)
    #: Running join losers skipped in the log and asked to stop (``losers: cancel``): still in
    #: flight until their attempt reports, whose outcome is then discarded.
    cancelled_losers: set[str] = field(default_factory=set)

    _ready: ReadySteps = field(init=False, repr=False, compare=False)
    _in_flight: set[str] = field(init=False, repr=False, compare=False)
    _read_by_conditions: set[str] = field(init=False, repr=False, compare=False)
    _v13: bool = field(init=False, repr=False, compare=False)
    _groups: dict[str, str | None] = field(init=False, repr=False, compare=False)
    _classes: dict[str, str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._in_flight = set()
        # Built with the given states' statuses (a rebuilt interpreter): one pass, not a
        # status change per step.
        given_status = {sid: st.status for sid, st in self.steps.items()}
        self._ready = ReadySteps(
            self.plan.steps,
            {s.step_id: given_status.get(s.step_id, StepStatus.PENDING) for s in self.plan.steps},
            needed=joins.needed_counts(self.plan),
            skipped_satisfies=not self.plan.metadata.cascades_skips,
            priorities=concurrency.step_priorities(self.plan))
        # Plan v1.3 decisions (conditions, limits, joins) make a start depend on more than
        # readiness; plans without them keep the v1.2 path unchanged.
        self._read_by_conditions = {
            ref for s in self.plan.steps if s.when
            for ref in condition_rules.referenced_steps(s.when)}
        # A forEach reads its source's output, and its fan-in its children's.
        self._read_by_conditions.update(
            src for s in self.plan.steps if (src := foreach_rules.source_step(s)) is not None)
        self._groups = concurrency.step_groups(self.plan)
        self._classes = concurrency.step_classes(self.plan)
        self._v13 = (concurrency.is_bounded(self.plan) or bool(self._read_by_conditions)
                     or any(s.when for s in self.plan.steps)
                     or joins.uses_joins_or_cascade(self.plan)
                     or any(s.for_each is not None for s in self.plan.steps))
        given, states = self.steps, _StepStates(self)
        self.steps = states
        for step_id, state in given.items():
            states.adopt(step_id, state)
        for spec in self.plan.steps:
            if spec.step_id not in states:
                states.adopt(spec.step_id, _new_state())
        given_expansions, self.expansions = self.expansions, {}
        for step_id, items in given_expansions.items():
            self._apply_expansion(step_id, items)

    def _apply_expansion(self, step_id: str, items: list[Any]) -> None:
        """Add a forEach template's children (idempotent: an expanded plan is kept as is)."""
        self.expansions[step_id] = list(items)
        if not foreach_rules.is_expanded(self.plan, step_id, items):
            self.plan = foreach_rules.expand(self.plan, step_id, items)
        children = [foreach_rules.child_id(step_id, i) for i in range(len(items))]
        self._read_by_conditions.update(children)
        self._groups = concurrency.step_groups(self.plan)
        self._classes = concurrency.step_classes(self.plan)
        self._ready = ReadySteps(
            self.plan.steps,
            {s.step_id: (self.steps[s.step_id].status if s.step_id in self.steps
                         else StepStatus.PENDING) for s in self.plan.steps},
            needed=joins.needed_counts(self.plan),
            skipped_satisfies=not self.plan.metadata.cascades_skips,
            priorities=concurrency.step_priorities(self.plan))
        for child in children:
            if child not in self.steps:
                self.steps[child] = StepState()

    def _observe(self, step_id: str, state: StepState) -> None:
        """A step's status or in-flight flag changed: keep the ready and in-flight sets."""
        if step_id not in self._ready.position:
            return
        self._ready.set_status(step_id, state.status)
        if state.in_flight:
            self._in_flight.add(step_id)
        else:
            self._in_flight.discard(step_id)

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
        return sorted(self._in_flight, key=self._ready.position.__getitem__)

    def reads_output(self, step_id: str) -> bool:
        """True when a condition of the plan reads this step's output (engines pass it in)."""
        return step_id in self._read_by_conditions

    def spec(self, step_id: str) -> StepSpec:
        """The plan's spec of a step."""
        return self.plan.step(step_id)

    def unseen_failure(self, failed: Mapping[str, int]) -> str | None:
        """A step whose final failure the log showed (``failed``: step -> logical attempt) while
        this interpreter still has that attempt in flight: an engine feeds its outcome before
        applying a signal decided on that log (rules.failure.final_failures)."""
        for step_id in sorted(failed):
            state = self.steps.get(step_id)
            if state is not None and state.in_flight \
                    and state.logical_attempt_id == failed[step_id]:
                return step_id
        return None

    def is_cancelled_loser(self, step_id: str) -> bool:
        """True while a running join loser's skip is decided and its attempt not yet settled."""
        return step_id in self.cancelled_losers

    # --- inputs -------------------------------------------------------------------------
    def begin(self) -> list[Command]:
        """Commands that start the run: RunStarted is written by the engine, then steps."""
        return self.advance()

    def step_awaiting_approval(self, step_id: str) -> list[Command]:
        """A gate wrote StepAwaitingApproval; start its timeout timer if it has one."""
        state = self.steps[step_id]
        state.awaiting_approval = True
        commands: list[Command] = []
        timeout = gate_rules.gate_timeout_ms(self.spec(step_id))
        if timeout is not None and not self.is_finished:
            commands.append(StartTimer(
                gate_rules.gate_timer_name(step_id, state.logical_attempt_id), timeout))
        # The run may have begun failing while this gate was opening.
        return commands + self._cancel_gates((step_id,))

    def step_settled(
        self,
        step_id: str,
        logical_attempt_id: int,
        outcome: StepSettlement,
        error: StepError | None = None,
        output: Any = None,
    ) -> list[Command]:
        """A logical attempt ended (its final event, if any, is already in the log)."""
        state = self.steps[step_id]
        if logical_attempt_id != state.logical_attempt_id or not state.in_flight:
            return []  # a late report of an attempt the run has moved past
        state.in_flight = False
        state.awaiting_approval = False
        paused = step_id in self.paused_cancellations
        self.paused_cancellations.discard(step_id)
        if step_id in self.cancelled_losers:
            # Skipped in the log when its join was met: what the stopped attempt came to is
            # discarded (no failure, no retry), whenever the stop reached it.
            self.cancelled_losers.discard(step_id)
            state.status = StepStatus.SKIPPED
            return self.advance()
        if outcome == NOT_STARTED:
            state.status = StepStatus.PENDING
            return self.advance()
        if pause_rules.runs_again_on_resume(outcome, paused, self.cancel_requested):
            state.status = StepStatus.PENDING
            state.logical_attempt_id += 1
            return self.advance()
        state.status = step_status_after(outcome)
        if outcome == "succeeded" and step_id in self._read_by_conditions:
            self.outputs[step_id] = output
        commands: list[Command] = []
        if records_failure(outcome):
            if self.failure is None:
                self.failure = failure_rules.run_failure(step_id, error)
            commands += self._cancel_gates(self.waiting_gates())
        return commands + self.advance()

    def loser_skip_refused(self, step_id: str) -> list[Command]:
        """The log refused a cancelled loser's StepSkipped: its attempt had settled first. The
        step keeps that outcome, which its engine reports (settles) as for any step."""
        self.cancelled_losers.discard(step_id)
        return []

    def settle(
        self, step_id: str, logical_attempt_id: int, status: str, error: StepError | None = None,
        output: Any = None,
    ) -> list[Command]:
        """``step_settled`` for a step runner outcome status (the settlement rule maps it)."""
        settled = settlement_of(status, error)
        return self.step_settled(step_id, logical_attempt_id, settled.outcome, settled.error,
                                 output)

    def signal_accepted(
        self,
        signal_type: SignalType | str,
        payload: Mapping[str, Any],
        *,
        signal_id: str | None = None,
        actor_id: str = "operator",
        attempt: int | None = None,
    ) -> list[Command]:
        """Apply an accepted signal; returns what the engine must do.

        ``attempt`` is the logical attempt a step signal was decided for: a step that has moved
        to another attempt since ignores it (a held RETRY_STEP never retries a later failure).
        """
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
            working = pause_rules.steps_to_cancel_on_pause(
                self.cancel_in_flight_on_pause,
                (s for s in self.in_flight() if not self.steps[s].awaiting_approval))
            self.paused_cancellations.update(working)
            if not working:
                return [event]
            return [event, CancelSteps(working, pause_rules.PAUSE_CANCEL_REASON)]
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
        if attempt is not None and attempt != state.logical_attempt_id:
            return []
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
        if kind == SignalType.CUSTOM:
            if not (state.in_flight and state.awaiting_approval
                    and signal_rules.waits_for(self.spec(step_id), str(payload.get("name")))):
                return []
            state.awaiting_approval = False
            data = payload.get("data")
            return [ResolveGate(step_id, state.logical_attempt_id, approve=True,
                                approver=actor_id, comment=None, signal_id=signal_id,
                                output=dict(data) if isinstance(data, Mapping) else {})]
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
            commands.append(CancelSteps(running, cancel_rules.step_cancel_reason(reason)))
        return commands + self.advance()

    def timer_fired(self, name: str) -> list[Command]:
        """A timer started by StartTimer fired."""
        if self.is_finished:
            return []
        if name.startswith(OPERATOR_TIMER_PREFIX):
            ordinal = int(name[len(OPERATOR_TIMER_PREFIX):])
            if self.awaiting_operator and ordinal == self.operator_ordinal:
                return self._finish(EventType.RUN_FAILED,
                                    failure_rules.operator_timeout_failure(self.failure))
            return []
        gate = gate_rules.parse_gate_timer(name)
        if gate is not None:
            step_id, attempt = gate
            state = self.steps.get(step_id)
            if (
                state is not None
                and state.in_flight
                and state.awaiting_approval
                and state.logical_attempt_id == attempt
            ):
                state.awaiting_approval = False
                return [ExpireGate(step_id, state.logical_attempt_id)]
        return []

    # --- the scheduling rule ------------------------------------------------------------
    def startable(self) -> list[str]:
        """The steps ``advance()`` would start now, in the ready order (nothing is changed)."""
        failing_fast = failure_rules.failing_fast(self.plan, self.failure)
        if self.is_finished or not scheduling.starts_new_steps(
                self.status, cancel_requested=self.cancel_requested, failing_fast=failing_fast):
            return []
        if self._v13:
            # What advance() would start, decided on a copy (skips may free later steps).
            probe = RunInterpreter.from_cursor(self.plan, self.to_cursor(),
                                               run_params=self.run_params)
            return [c.step_id for c in probe._decide() if isinstance(c, StartStep)]
        return scheduling.steps_to_start_now(self._ready, self._in_flight)

    def would_start(self, step_id: str) -> bool:
        """True when the interpreter, in this state, starts ``step_id`` on its next move."""
        return step_id in self.startable()

    def advance(self) -> list[Command]:
        """Start what can start, or finish the run when nothing else can happen."""
        if self.is_finished:
            return []
        running = self.in_flight()
        if self.cancel_requested:
            if running:
                return []
            return self._finish(EventType.RUN_CANCELLED, {"reason": self.cancel_reason})
        if failure_rules.failing_fast(self.plan, self.failure):
            if running:
                return []
            return self._finish(EventType.RUN_FAILED, dict(self.failure or {}))
        commands: list[Command] = []
        if self._v13:
            commands = self._decide()
            running = self.in_flight()
            if not running and failure_rules.failing_fast(self.plan, self.failure):
                # A forEach that failed on its list (plan v1.3) fails the run here.
                return [*commands, *self._finish(EventType.RUN_FAILED, dict(self.failure or {}))]
        else:
            for step_id in self.startable():
                state = self.steps[step_id]
                state.status = StepStatus.RUNNING
                state.in_flight = True
                commands.append(StartStep(step_id, state.logical_attempt_id))
        if any(isinstance(c, StartStep) for c in commands) or running \
                or self.status != RunStatus.RUNNING:
            return commands
        statuses = self.statuses()
        if scheduling.is_complete(statuses):
            return [*commands, *self._finish(EventType.RUN_COMPLETED,
                                             scheduling.completion_payload(statuses))]
        if not self.awaiting_operator:
            # awaitOperator: nothing can progress until RETRY_STEP, SKIP_STEP or CANCEL.
            self.awaiting_operator = True
            self.operator_ordinal += 1
            failed = [sid for sid, st in statuses.items() if st == StepStatus.FAILED]
            return [
                *commands,  # plan v1.3 skips decided just before
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
        return commands

    def _decide(self) -> list[Command]:
        """Plan v1.3 moves, pass after pass in the ready order until a pass skips nothing: cascaded
        skips first, then each ready step that fits the limits starts or, its condition false,
        is skipped (a skip can ready more steps). Each condition is evaluated once."""
        commands: list[Command] = []
        while True:
            completed = self._complete_templates()
            commands += completed
            cascades = joins.cascaded(self.plan, self.statuses(), self._in_flight)
            for step_id, deps in cascades:
                commands.append(self._skip(step_id, condition_rules.cascade_reason(deps)))
            if cascades or completed:
                continue
            skipped = False
            slots = concurrency.Slots(self.plan, self._groups, self._in_flight, self._classes)
            for step_id in scheduling.steps_to_start_now(self._ready, self._in_flight):
                if slots.full:
                    break
                if self.steps[step_id].status != StepStatus.PENDING or not slots.fits(step_id):
                    continue  # a join's loser earlier in this pass, or no slot in its group
                spec = self.spec(step_id)
                if spec.when is not None:
                    value, error = condition_rules.evaluate(spec.when, condition_rules.
                        condition_context(self.plan, step_id, self._status_of, self.outputs,
                                          self.run_params))
                    if not value:
                        commands.append(self._skip(
                            step_id, condition_rules.skip_reason(spec.when, error)))
                        skipped = True
                        continue
                if spec.for_each is not None:
                    commands += self._expand(spec)
                    skipped = True  # new children, or a failure: decide again
                    continue
                state = self.steps[step_id]
                state.status, state.in_flight = StepStatus.RUNNING, True
                slots.take(step_id)
                commands.append(StartStep(step_id, state.logical_attempt_id))
                dep_status = {d: StepStatus.SKIPPED if d in self.cancelled_losers
                              else self.steps[d].status for d in spec.depends_on}
                for loser in joins.losers_to_skip(spec, dep_status, self._in_flight):
                    commands.append(self._skip(loser, joins.loser_reason(step_id)))
                    skipped = True
                commands += self._cancel_losers(
                    step_id, joins.losers_to_cancel(spec, dep_status, self._in_flight))
            if not skipped:
                return commands

    def _expand(self, spec: StepSpec) -> list[Command]:
        """Start a forEach template: fail it on a bad list, else record and add its children."""
        step_id = spec.step_id
        state = self.steps[step_id]
        params = {**self.plan.params, **self.run_params}
        items, error = foreach_rules.items_of(spec, self.outputs, params)
        state.status = StepStatus.RUNNING
        attempt = state.logical_attempt_id
        started = WriteStepEvent(EventType.STEP_STARTED, step_id, attempt, {"kind": spec.kind})
        if items is None:
            assert error is not None
            state.status = StepStatus.FAILED
            if self.failure is None:
                self.failure = failure_rules.run_failure(step_id, error)
            return [started, WriteStepEvent(EventType.STEP_FAILED, step_id, attempt,
                                            {"error": error.model_dump(mode="json")})]
        commands: list[Command] = [started, WriteStepEvent(
            foreach_rules.STEP_EXPANDED, step_id, attempt,
            foreach_rules.expansion_payload(step_id, items))]
        self._apply_expansion(step_id, items)
        each = foreach_rules.for_each_of(spec)
        if each.when is not None:
            context = condition_rules.condition_context(
                self.plan, step_id, self._status_of, self.outputs, self.run_params)
            for index, item in enumerate(items):
                value, problem = condition_rules.evaluate(
                    each.when, foreach_rules.item_context(context, index, item))
                if not value:
                    commands.append(self._skip(foreach_rules.child_id(step_id, index),
                                               condition_rules.skip_reason(each.when, problem)))
        return commands

    def _complete_templates(self) -> list[Command]:
        """Complete each expanded template whose children have all succeeded or been skipped,
        with their outputs in item order."""
        commands: list[Command] = []
        for step_id, items in self.expansions.items():
            state = self.steps[step_id]
            if state.status != StepStatus.RUNNING:
                continue
            children = [foreach_rules.child_id(step_id, i) for i in range(len(items))]
            if any(self.steps[c].status not in (StepStatus.SUCCESS, StepStatus.SKIPPED)
                   for c in children):
                continue
            output = [self.outputs.get(c) for c in children]
            state.status = StepStatus.SUCCESS
            if step_id in self._read_by_conditions:
                self.outputs[step_id] = output
            commands.append(WriteStepEvent(EventType.STEP_COMPLETED, step_id,
                                           state.logical_attempt_id, {"output": output}))
        return commands

    def _cancel_losers(self, step_id: str, losers: Sequence[str]) -> list[Command]:
        """Skip running join losers in the log now and ask their engine to stop them.

        StepStarted goes first (a duplicate if the worker wrote it), so the log shows the
        attempt whether or not its worker had begun; the step stays in flight until the
        attempt reports, so the run ends only once the attempt has stopped.
        """
        if not losers:
            return []
        reason = joins.cancelled_loser_reason(step_id)
        commands: list[Command] = []
        for loser in losers:
            state = self.steps[loser]
            state.awaiting_approval = False  # a gate loser's timer and approvals are void
            self.cancelled_losers.add(loser)
            attempt = state.logical_attempt_id
            commands.append(WriteStepEvent(EventType.STEP_STARTED, loser, attempt,
                                           _started_payload(self.spec(loser))))
            commands.append(WriteStepEvent(EventType.STEP_SKIPPED, loser, attempt,
                                           {"reason": reason}))
        commands.append(CancelSteps(tuple(losers), reason))
        return commands

    def _status_of(self, step_id: str) -> str:
        return str(self.steps[step_id].status)

    def _skip(self, step_id: str, reason: str) -> WriteStepEvent:
        state = self.steps[step_id]
        state.status = StepStatus.SKIPPED
        return WriteStepEvent(EventType.STEP_SKIPPED, step_id, state.logical_attempt_id,
                              {"reason": reason})

    # --- rebuilt interpreters (an engine that keeps no interpreter between moves) -------
    def waiting_gates(self) -> list[str]:
        """Approval gates waiting for a decision, in plan order."""
        return [s for s in self.in_flight() if self.steps[s].awaiting_approval]

    def _cancel_gates(self, candidates: Sequence[str]) -> list[Command]:
        gates = failure_rules.gates_to_cancel(
            self.plan, self.failure, ending=self.is_finished or self.cancel_requested,
            waiting_gates=candidates)
        return [CancelSteps(gates, FAIL_FAST_GATE_REASON)] if gates else []

    def owed(self) -> list[Command]:
        """What this state calls for beyond ``advance()``, for an interpreter rebuilt from the
        log that did not see the state arise (a failing failFast run's waiting gates)."""
        return self._cancel_gates(self.waiting_gates())

    def mark_started(self, step_ids: Iterable[str]) -> None:
        """Count PENDING steps as running whose start an engine has carried out although the
        log does not show it yet (a rebuilt interpreter would otherwise start them again, or
        end the run before they settle)."""
        for step_id in step_ids:
            state = self.steps[step_id]
            if state.status == StepStatus.PENDING:
                state.status, state.in_flight = StepStatus.RUNNING, True

    def durable_timers(self, events: Sequence[Event]) -> list[tuple[str, datetime]]:
        """The timers this state has running, each with when it is due, from the log's times
        (for engines without durable timers of their own)."""
        timers: list[tuple[str, datetime]] = []
        if self.awaiting_operator and self.operator_ordinal:
            marks = [e for e in events if e.event_type == RUN_AWAITING_OPERATOR]
            if marks:
                due = _aware(marks[-1].emitted_at) + timedelta(
                    milliseconds=self.plan.metadata.operator_timeout_ms)
                timers.append((f"{OPERATOR_TIMER_PREFIX}{self.operator_ordinal}", due))
        for step_id in self.waiting_gates():
            attempt = self.steps[step_id].logical_attempt_id
            timeout = gate_rules.gate_timeout_ms(self.spec(step_id))
            opened = [e for e in events if e.event_type == EventType.STEP_AWAITING_APPROVAL
                      and e.step_id == step_id and e.logical_attempt_id == attempt]
            if timeout is not None and opened:
                due = _aware(opened[-1].emitted_at) + timedelta(milliseconds=timeout)
                timers.append((gate_rules.gate_timer_name(step_id, attempt), due))
        return timers

    def _finish(self, event_type: str, payload: Mapping[str, Any]) -> list[Command]:
        self.status = {
            EventType.RUN_COMPLETED: RunStatus.COMPLETED,
            EventType.RUN_FAILED: RunStatus.FAILED,
            EventType.RUN_CANCELLED: RunStatus.CANCELLED,
        }[EventType(event_type)]
        return [Finish(event_type, payload)]

    # --- persistence (continue-as-new, recovery) ----------------------------------------
    def to_cursor(self, *, compact: bool = False) -> dict[str, Any]:
        """A compact, JSON-safe cursor of everything but the plan.

        ``compact`` keeps the step states as runs of equal states over plan positions
        (``stepRanges``), so a large plan's mostly finished run carries a few ranges, not an
        entry per step; ``from_cursor`` reads both forms.
        """
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
            **({"outputs": dict(self.outputs)} if self.outputs else {}),
            **({"expansions": dict(self.expansions)} if self.expansions else {}),
            **({"cancelledLosers": sorted(self.cancelled_losers)}
               if self.cancelled_losers else {}),
            **({"stepRanges": self._step_ranges()} if compact else {"steps": {
                sid: [str(st.status), st.logical_attempt_id, st.in_flight, st.awaiting_approval]
                for sid, st in self.steps.items()
                if st.status != StepStatus.PENDING or st.logical_attempt_id != 1
            }}),
        }

    def _step_ranges(self) -> list[list[Any]]:
        """Non-initial step states as ``[status, attempt, inFlight, awaiting, first, last]``:
        each a run of plan positions whose steps share that state."""
        ranges: list[list[Any]] = []
        last: tuple[Any, ...] | None = None
        for pos, spec in enumerate(self.plan.steps):
            st = self.steps[spec.step_id]
            key = (str(st.status), st.logical_attempt_id, st.in_flight, st.awaiting_approval)
            if key == ("PENDING", 1, False, False):
                last = None
            elif key == last and ranges[-1][5] == pos - 1:
                ranges[-1][5] = pos
            else:
                ranges.append([*key, pos, pos])
                last = key
        return ranges

    @classmethod
    def from_cursor(cls, plan: ExecutionPlan, cursor: Mapping[str, Any], *,
                    run_params: Mapping[str, Any] | None = None) -> RunInterpreter:
        """Rebuild an interpreter from ``to_cursor()`` output (and the run's params)."""
        ranges = cursor.get("stepRanges")
        given: dict[str, StepState] = {}
        if ranges is not None and not cursor.get("expansions"):
            # Positions name the plan's own steps: the states go in with the construction,
            # every step in plan order (the order statuses() reports).
            at: dict[int, StepState] = {}
            for status, attempt, in_flight, awaiting, first, last in ranges:
                for pos in range(int(first), int(last) + 1):
                    at[pos] = _new_state(StepStatus(status), int(attempt), bool(in_flight),
                                         bool(awaiting))
            given = {spec.step_id: at.get(pos) or _new_state()
                     for pos, spec in enumerate(plan.steps)}
        interp = cls(
            plan=plan,
            steps=given,
            status=RunStatus(cursor["status"]),
            pause_ordinal=int(cursor["pauseOrdinal"]),
            operator_ordinal=int(cursor["operatorOrdinal"]),
            awaiting_operator=bool(cursor["awaitingOperator"]),
            cancel_requested=bool(cursor["cancelRequested"]),
            cancel_reason=cursor.get("cancelReason"),
            failure=cursor.get("failure"),
            cancel_in_flight_on_pause=bool(cursor.get("cancelInFlightOnPause", False)),
            paused_cancellations=set(cursor.get("pausedCancellations", ())),
            outputs=dict(cursor.get("outputs") or {}),
            run_params=dict(run_params or {}),
            expansions=dict(cursor.get("expansions") or {}),
            cancelled_losers=set(cursor.get("cancelledLosers") or ()),
        )
        if ranges is not None and not given:
            # Positions name the expanded plan's steps (forEach children included).
            for status, attempt, in_flight, awaiting, first, last in ranges:
                for spec in interp.plan.steps[int(first):int(last) + 1]:
                    interp.steps[spec.step_id] = StepState(
                        StepStatus(status), int(attempt), bool(in_flight), bool(awaiting))
        for sid, (status, attempt, in_flight, awaiting) in (cursor.get("steps") or {}).items():
            interp.steps[sid] = StepState(StepStatus(status), int(attempt), bool(in_flight),
                                          bool(awaiting))
        return interp

    @classmethod
    def from_snapshot(
        cls, plan: ExecutionPlan, snapshot: RunSnapshot, events: Iterable[Event] = (), *,
        run_params: Mapping[str, Any] | None = None,
    ) -> RunInterpreter:
        """Rebuild from the store's truth; RUNNING steps are reported as in flight.

        ``events`` (the run's log) restores what the snapshot does not keep: how many times
        the run has waited for an operator.
        """
        events = list(events)
        expansions = {e.step_id: list(e.payload.get("items") or ()) for e in events
                      if e.event_type == foreach_rules.STEP_EXPANDED and e.step_id is not None}
        interp = cls(plan=plan, run_params=dict(run_params or {}), expansions=expansions)
        interp.operator_ordinal = sum(1 for e in events
                                      if e.event_type == RUN_AWAITING_OPERATOR)
        approved = snapshot.status == RunStatus.APPROVED
        interp.status = RunStatus.RUNNING if approved else snapshot.status
        interp.pause_ordinal = snapshot.pause_count
        interp.awaiting_operator = snapshot.substatus == "AWAITING_OPERATOR"
        for step in snapshot.steps:
            interp.steps[step.step_id] = StepState(
                status=step.status,
                logical_attempt_id=step.logical_attempt_id,
                # An expanded forEach template is RUNNING while its children run, not in flight.
                in_flight=step.status == StepStatus.RUNNING and step.step_id not in expansions,
                awaiting_approval=step.substatus == StepSubstatus.AWAITING_APPROVAL,
            )
            if step.status == StepStatus.SUCCESS and step.step_id in interp._read_by_conditions:
                interp.outputs[step.step_id] = step.output
            if step.status == StepStatus.FAILED and interp.failure is None and step.error:
                interp.failure = failure_rules.run_failure(step.step_id, step.error)
        return interp


def _started_payload(spec: StepSpec) -> dict[str, Any]:
    """StepStarted's payload, as the step runner writes it."""
    payload: dict[str, Any] = {"kind": spec.kind}
    if spec.resource_class is not None:
        payload["resourceClass"] = spec.resource_class
    return payload


def _aware(moment: datetime) -> datetime:
    """A log time as an aware datetime (a naive one is UTC, as every producer writes)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
