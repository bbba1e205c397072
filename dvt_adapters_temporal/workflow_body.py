"""The generic interpreter workflow's body: one workflow type runs every plan.

The workflow is a thin, deterministic executor of the shared RunInterpreter: it feeds the
interpreter what happened (a step settled, a gate started waiting, a timer fired, a signal was
accepted) and carries out the commands it returns, in order. Every side effect (plan fetch,
events, steps) is an activity. Behaviour changes are gated with ``workflow.patched`` so running
workflows replay unchanged (see docs/temporal.md).

This module is passed through the workflow sandbox: it is imported once per worker, and only
the small decorated class in ``dvt_adapters_temporal.workflow`` is loaded for each workflow run.
So it keeps no module-level state a run could change, and it reaches time, randomness and I/O
only through ``temporalio.workflow``, as the rest of the deterministic core does. The module is
over the usual size because the workflow's deterministic state lives in one class; pure helpers
live beside it.
"""
from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

from dvt_adapters_temporal.activity_options import (
    BOOKKEEPING_RETRY,
    BOOKKEEPING_TIMEOUT,
    invocation_json,
    step_retry_policy,
    step_task_queue,
    step_timeout,
)
from dvt_adapters_temporal.budget import budget_spent, continue_now
from dvt_adapters_temporal.handoff import leave, take
from dvt_adapters_temporal.ordering import SignalOrder
from dvt_adapters_temporal.plans import parsed_plan, unpack
from dvt_adapters_temporal.wire import (
    ACT_GATE,
    ACT_PREPARE,
    ACT_RUN_EVENT,
    ACT_RUN_STEP,
    CANCEL_REASON_QUERY,
    SIGNAL_NAME,
    STATUS_QUERY,
    Cursor,
    GateInput,
    Prepared,
    PrepareInput,
    RunEventInput,
    RunInput,
    RunResult,
    SignalMessage,
    StepInput,
    StepOutcome,
    WorkflowInput,
)
from dvt_engine.interpreter import (
    CancelSteps,
    Command,
    ExpireGate,
    Finish,
    ResolveGate,
    RunInterpreter,
    StartStep,
    StartTimer,
    WriteRunEvent,
    WriteStepEvent,
)
from dvt_engine.models.snapshot import StepError
from dvt_engine.rules import failure as failure_rules
from dvt_engine.rules.failure import FAIL_FAST_GATE_REASON
from dvt_engine.rules.gates import parse_gate_timer
from dvt_engine.rules.signals import is_gate

WORKFLOW_NAME = "dvt.Run"

# Behaviour changes since the first recorded histories, each gated so that runs started before
# the change replay unchanged (docs/temporal.md, "Changing the workflow").
PATCH_PAUSE_WAITS_FOR_OPENING_GATES = "dvt-pause-waits-for-opening-gates"
# The history-size budget defers new steps (not only the step count), and a run whose budget
# is spent continues as new as soon as nothing runs, even when no step was deferred.
PATCH_SIZE_BUDGET_DEFERS_STEPS = "dvt-size-budget-defers-steps"
# Gate rules come from the core alone: a gate's ``params.timeoutMs`` starts its timer (as on
# Conductor), and a gate opening while a failing run is cancelled is not cancelled twice.
PATCH_GATE_RULES_FROM_CORE = "dvt-gate-rules-from-core"
# Accepted signals apply in the order they were decided, not in the order their deliveries
# arrive (dvt_adapters_temporal.ordering); a step signal for an attempt the step has left is
# ignored by the interpreter itself (older deliveries carry no attempt).
PATCH_SIGNALS_IN_DECISION_ORDER = "dvt-signals-in-decision-order"
# A signal decided on a log that shows a step's final failure waits until the workflow has
# been fed that failure (the activity writes it before its result reaches the workflow).
PATCH_SIGNALS_AFTER_LOGGED_FAILURES = "dvt-signals-after-logged-failures"
SIGNAL_ORDER_WAIT = timedelta(seconds=10)
# An attempt cancelled before it began (a pause right after its start) keeps its logical
# attempt: the next start must follow the log's last attempt, or the store refuses it.
PATCH_UNSTARTED_STEP_KEEPS_ATTEMPT = "dvt-unstarted-step-keeps-attempt"
# The history-size budget counts what a workflow run adds to its history, not the input it began
# with nor its copy of the plan: a large plan's JSON and carried cursor alone near the budget,
# and every later run would end after a single step (docs/perf/temporal.md).
PATCH_BUDGET_COUNTS_GROWTH = "dvt-budget-counts-growth"
# What a workflow run carries stays small for large plans: dvt.prepare returns the plan packed
# (zlib), the interpreter's cursor keeps step states as ranges of plan positions, and the next
# run takes over the ending run's interpreter when it runs in the same process
# (dvt_adapters_temporal.handoff) instead of rebuilding it (docs/perf/temporal.md).
PATCH_COMPACT_CARRY = "dvt-compact-carry"
# A running join loser cancelled when its join is met (plan v1.3 ``losers: cancel``): its skip
# may find its outcome already in the log, which the interpreter is then told (and the loser's
# activity is cancelled; its result, when it comes, is discarded by the interpreter).
PATCH_JOIN_LOSERS_CANCEL = "dvt-join-losers-cancel"
_STEP_SIGNALS = frozenset({"RETRY_STEP", "SKIP_STEP", "APPROVE_STEP", "CUSTOM"})


class RunWorkflowBody:
    """Runs one plan: validates it, walks its DAG, applies operator signals."""

    def __init__(self) -> None:
        self._queue: list[WorkflowInput] = []
        self._seen_signals: set[str] = set()
        self._applied: list[str] = []
        self._activities: dict[str, asyncio.Task[None]] = {}
        self._gates: dict[str, int] = {}
        self._cancel_asked: dict[str, str] = {}
        # Steps whose latest outcome the interpreter has not been fed yet, and step signals
        # held back until it has (the signal was decided on the store, which may be ahead).
        self._unfed: set[str] = set()
        self._held: dict[str, list[WorkflowInput]] = {}
        self._order = SignalOrder()
        self._deferred: list[StartStep] = []
        self._timers: dict[str, int] = {}
        self._timer_tasks: dict[str, asyncio.Task[None]] = {}
        self._started_this_generation = 0
        self._interp: RunInterpreter | None = None
        self._inp: RunInput | None = None
        self._generation = 0
        self._finished: RunResult | None = None
        self._size_budget = True
        self._history_base = 0
        self._compact = False

    # --- operator input ------------------------------------------------------------------
    @workflow.signal(name=SIGNAL_NAME)
    def on_signal(self, msg: SignalMessage) -> None:
        """Queue an accepted signal; a redelivered signalId is ignored."""
        if msg.signal_id in self._seen_signals:
            return
        self._seen_signals.add(msg.signal_id)
        self._queue.append(WorkflowInput("signal", signal=msg))

    @workflow.query(name=STATUS_QUERY)
    def status(self) -> dict[str, Any]:
        """The run status as this workflow sees it, for diagnosis."""
        interp = self._interp
        if interp is None:
            return {"runId": self._run_id(), "status": "PENDING", "substatus": None,
                    "running": [], "generation": self._generation, "steps": {}}
        substatus = "AWAITING_OPERATOR" if interp.awaiting_operator else None
        status = str(interp.status)
        if interp.cancel_requested and not interp.is_finished:
            status = "RUNNING"
        return {
            "runId": self._run_id(),
            "status": status,
            "substatus": substatus,
            "running": interp.in_flight(),
            "generation": self._generation,
            "pauseOrdinal": interp.pause_ordinal,
            "steps": {k: str(v) for k, v in interp.statuses().items()},
        }

    @workflow.query(name=CANCEL_REASON_QUERY)
    def cancel_reason(self, step_id: str) -> str | None:
        """Why the run asked a running step to stop (read by the step's activity)."""
        return self._cancel_asked.get(step_id)

    def _run_id(self) -> str | None:
        return str(self._inp.context["runId"]) if self._inp else None

    # --- the run -------------------------------------------------------------------------
    async def run(self, inp: RunInput) -> RunResult:
        """Interpret the plan until the run is terminal (or continue as new)."""
        self._inp = inp
        # Decided once per workflow run, so replays of runs begun before a change keep the old
        # behaviour (the marker is in their history, or not).
        self._size_budget = workflow.patched(PATCH_SIZE_BUDGET_DEFERS_STEPS)
        counts_growth = workflow.patched(PATCH_BUDGET_COUNTS_GROWTH)
        self._compact = workflow.patched(PATCH_COMPACT_CARRY)
        began_at = workflow.info().get_current_history_size()
        cursor = inp.cursor
        self._generation = cursor.generation if cursor else 0
        if cursor:
            self._applied = list(cursor.applied_signals)
            self._seen_signals.update(self._applied)
            self._order.applied_seq = cursor.signal_seq
        prepared: Prepared = await workflow.execute_local_activity(
            ACT_PREPARE,
            PrepareInput(inp.plan_ref, inp.context, inp.engine_run_ref, cursor is None,
                         packed=self._compact),
            result_type=Prepared,
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )
        if prepared.refused_code is not None:
            # The plan was refused before any step; RunFailed is already in the log.
            return self._result("FAILED", None, prepared.refused_code)
        packed = prepared.plan_packed
        plan = parsed_plan(str(inp.plan_ref.get("sha256", "")),
                           prepared.plan if packed is None else (lambda: unpack(packed)))
        if counts_growth:
            # The run's input and its copy of the plan are there whatever it does.
            self._history_base = began_at + (
                len(packed) if packed is not None
                else len(json.dumps(prepared.plan, separators=(",", ":"))))
        if cursor is None:
            self._interp = RunInterpreter(
                plan=plan, cancel_in_flight_on_pause=inp.config.cancel_in_flight_on_pause,
                run_params=dict(inp.context.get("params") or {}),
            )
            await self._execute(self._interp.begin())
        else:
            taken = take(workflow.info().continued_run_id, cursor.interpreter) \
                if self._compact else None
            self._interp = taken or RunInterpreter.from_cursor(
                plan, cursor.interpreter, run_params=dict(inp.context.get("params") or {}))
            await self._resume(cursor)
        while self._finished is None:
            if not await self._wait_for_input():
                continue
            if self._queue:
                item = self._queue.pop(0)
                if self._out_of_order(item) or self._hold(item):
                    continue
                await self._execute(self._feed(item))
                self._release(item)
                if item.signal is not None:
                    self._applied.append(item.signal.signal_id)
                    self._signal_done(item.signal)
            elif self._can_now():
                self._continue_as_new()
        return self._finished

    async def _wait_for_input(self) -> bool:
        """Wait for input; False when signals waited too long for a lost predecessor."""
        if not self._order.waiting:
            await workflow.wait_condition(self._ready)
            return True
        try:
            await workflow.wait_condition(self._ready, timeout=SIGNAL_ORDER_WAIT)
        except TimeoutError:
            self._queue[0:0] = self._order.give_up()
            return False
        return True

    def _ready(self) -> bool:
        return bool(self._queue) or self._can_now()

    def _out_of_order(self, item: WorkflowInput) -> bool:
        """Park a signal while the signal decided before it has not been applied."""
        msg = item.signal
        if msg is None or not self._order.must_wait(msg):
            return False
        if not workflow.patched(PATCH_SIGNALS_IN_DECISION_ORDER):
            return False
        self._order.wait(item)
        return True

    def _signal_done(self, msg: SignalMessage) -> None:
        self._queue[0:0] = self._order.applied(msg)

    def _hold(self, item: WorkflowInput) -> bool:
        """Hold a step signal back while that step's outcome is still on its way."""
        msg = item.signal
        if msg is None:
            return False
        failed = self._interp.unseen_failure(msg.failed_steps) \
            if msg.failed_steps and self._interp is not None else None
        if failed is not None and failed in self._unfed \
                and workflow.patched(PATCH_SIGNALS_AFTER_LOGGED_FAILURES):
            # Decided on a log that shows this step's final failure: a failing run must not
            # start what the signal would start before the failure.
            self._held.setdefault(failed, []).append(item)
            return True
        if msg.type == "PAUSE" and self._inp is not None and \
                self._inp.config.cancel_in_flight_on_pause:
            # A pause that cancels running work spares waiting gates; a gate whose opening
            # the store already shows must be known as waiting before the pause applies.
            # Sorted: set order follows string hashing, which differs between worker processes.
            opening = sorted(s for s in self._unfed if self._is_gate(s))
            if opening and workflow.patched(PATCH_PAUSE_WAITS_FOR_OPENING_GATES):
                self._held.setdefault(opening[0], []).append(item)
                return True
            return False
        if msg.type not in _STEP_SIGNALS:
            return False
        step_id = msg.payload.get("stepId")
        if not isinstance(step_id, str) or step_id not in self._unfed:
            return False
        self._held.setdefault(step_id, []).append(item)
        return True

    def _is_gate(self, step_id: str) -> bool:
        return self._interp is not None and is_gate(self._interp.spec(step_id))

    def _release(self, item: WorkflowInput) -> None:
        """After a step's outcome was fed, its held signals go first."""
        if item.kind in ("settled", "awaiting") and item.step_id in self._held:
            self._queue[0:0] = self._held.pop(item.step_id)

    def _feed(self, item: WorkflowInput) -> list[Command]:
        interp = self._interp
        assert interp is not None
        if item.kind in ("settled", "awaiting"):
            self._unfed.discard(item.step_id)
        if item.kind == "settled":
            self._activities.pop(item.step_id, None)
            self._gates.pop(item.step_id, None)
            self._cancel_asked.pop(item.step_id, None)
            return interp.settle(item.step_id, item.attempt, item.outcome, item.error,
                                 item.output)
        if item.kind == "awaiting":
            commands = interp.step_awaiting_approval(item.step_id)
            if (interp.cancel_requested and failure_rules.failing_fast(interp.plan, interp.failure)
                    and not interp.is_finished
                    and not workflow.patched(PATCH_GATE_RULES_FROM_CORE)):
                # Runs begun before the gate rules came from the core alone also cancelled a
                # gate that opened while a failing run was being cancelled.
                commands = [*commands, CancelSteps((item.step_id,), FAIL_FAST_GATE_REASON)]
            return commands
        if item.kind == "timer":
            self._timers.pop(item.timer, None)
            self._timer_tasks.pop(item.timer, None)
            return interp.timer_fired(item.timer)
        msg = item.signal
        assert msg is not None
        return interp.signal_accepted(msg.type, msg.payload, signal_id=msg.signal_id,
                                      actor_id=msg.actor_id or "operator", attempt=msg.attempt)

    # --- commands ------------------------------------------------------------------------
    async def _execute(self, commands: list[Command]) -> None:
        for cmd in commands:
            if isinstance(cmd, StartStep):
                self._start_step(cmd)
            elif isinstance(cmd, CancelSteps):
                await self._cancel_steps(cmd)
            elif isinstance(cmd, WriteRunEvent):
                await self._event(cmd.event_type, dict(cmd.payload),
                                  discriminator=cmd.discriminator or 1,
                                  signal_id=cmd.caused_by_signal_id)
            elif isinstance(cmd, WriteStepEvent) and self._loser_write(cmd):
                await self._write_loser_event(cmd)
            elif isinstance(cmd, WriteStepEvent):
                await self._event(cmd.event_type, dict(cmd.payload), step_id=cmd.step_id,
                                  attempt=cmd.logical_attempt_id,
                                  signal_id=cmd.caused_by_signal_id)
            elif isinstance(cmd, ResolveGate):
                await self._resolve_gate(cmd)
            elif isinstance(cmd, ExpireGate):
                await self._close_gate(cmd.step_id, cmd.logical_attempt_id, "expire", None)
            elif isinstance(cmd, StartTimer):
                if self._legacy_gate_timer(cmd.name):
                    continue
                fire_at = int(workflow.now().timestamp() * 1000) + cmd.delay_ms
                self._arm_timer(cmd.name, fire_at)
            elif isinstance(cmd, Finish):
                await self._finish(cmd)
                return

    def _loser_write(self, cmd: WriteStepEvent) -> bool:
        """An event of a running join loser being cancelled (checked before the patch marker,
        so runs without such a loser never record it)."""
        return self._interp is not None and self._interp.is_cancelled_loser(cmd.step_id) \
            and workflow.patched(PATCH_JOIN_LOSERS_CANCEL)

    async def _write_loser_event(self, cmd: WriteStepEvent) -> None:
        """Write a cancelled loser's StepStarted/StepSkipped; a refusal means its attempt had
        settled first, and the interpreter keeps that outcome (its activity reports it)."""
        assert self._interp is not None
        seq = await self._event(cmd.event_type, dict(cmd.payload), step_id=cmd.step_id,
                                attempt=cmd.logical_attempt_id, tolerate_illegal=True)
        if not seq:
            await self._execute(self._interp.loser_skip_refused(cmd.step_id))

    def _legacy_gate_timer(self, name: str) -> bool:
        """A gate timer that runs begun before PATCH_GATE_RULES_FROM_CORE never started."""
        gate = parse_gate_timer(name)
        if gate is None or self._interp is None or self._interp.spec(gate[0]).timeout_ms:
            return False
        return not workflow.patched(PATCH_GATE_RULES_FROM_CORE)

    def _start_step(self, cmd: StartStep) -> None:
        assert self._inp is not None
        if self._budget_spent():
            # This run of the chain has done its share; the next one starts the step.
            self._deferred.append(cmd)
            return
        self._started_this_generation += 1
        self._unfed.add(cmd.step_id)
        self._activities[cmd.step_id] = asyncio.create_task(
            self._run_activity(cmd.step_id, self._spec(cmd.step_id), cmd.logical_attempt_id)
        )

    def _invocation(self, spec: dict[str, Any], attempt: int) -> dict[str, Any]:
        """The shared StepInvocation as JSON (the activity sets the engine attempt)."""
        assert self._inp is not None
        assert self._interp is not None
        return invocation_json(self._inp, self._interp.plan.params, spec, attempt)

    def _spec(self, step_id: str) -> dict[str, Any]:
        assert self._interp is not None
        spec: dict[str, Any] = self._interp.spec(step_id).model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
        return spec

    async def _run_activity(self, step_id: str, spec: dict[str, Any], attempt: int) -> None:
        inp = self._inp
        assert inp is not None
        assert self._interp is not None
        cfg = inp.config
        step = self._interp.spec(step_id)
        timeout = step_timeout(step, cfg.default_step_timeout_s)
        queue = step_task_queue(step, cfg.kind_queues, cfg.task_queue, cfg.class_queues)
        try:
            outcome: StepOutcome = await workflow.execute_activity(
                ACT_RUN_STEP,
                StepInput(self._invocation(spec, attempt),
                          want_output=self._interp.reads_output(step_id)),
                result_type=StepOutcome,
                task_queue=queue,
                start_to_close_timeout=timeout,
                heartbeat_timeout=timedelta(seconds=cfg.heartbeat_timeout_s),
                retry_policy=step_retry_policy(step),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                # Cancelled before any worker took it: no event of this attempt exists.
                outcome = StepOutcome("cancelled", "STEP_CANCELLED", "step cancelled") \
                    if err.started_event_id else StepOutcome(self._unstarted_outcome())
            else:
                # Only lost workers get here (the runner settles its own failures): record
                # the failure unless the runner already did.
                code = getattr(err.cause, "type", None) or "STEP_FAILED"
                outcome = StepOutcome("failed", code, str(err.cause or err))
                await self._event("StepFailed", {"error": {
                    "code": code, "message": outcome.error_message, "retryable": False}},
                    step_id=step_id, attempt=attempt, tolerate_illegal=True)
        if outcome.status == "awaiting_approval":
            # The gate now waits for a decision; no activity runs for it meanwhile.
            self._activities.pop(step_id, None)
            self._gates[step_id] = attempt
            if step_id in self._cancel_asked:
                await self._close_gate(step_id, attempt, "cancel", self._cancel_asked[step_id])
            else:
                self._queue.append(WorkflowInput("awaiting", step_id=step_id, attempt=attempt))
            return
        self._settle(step_id, attempt, outcome)

    def _unstarted_outcome(self) -> str:
        """How an attempt stopped before it began settles (older runs: as cancelled)."""
        return "not_started" if workflow.patched(PATCH_UNSTARTED_STEP_KEEPS_ATTEMPT) \
            else "cancelled"

    def _settle(self, step_id: str, attempt: int, outcome: StepOutcome) -> None:
        # The interpreter maps the outcome to a settlement (rules.settlement) when it is fed.
        error = None
        if outcome.error_code is not None:
            error = StepError(code=outcome.error_code, message=outcome.error_message or "",
                              retryable=outcome.retryable)
        self._queue.append(WorkflowInput("settled", step_id=step_id, attempt=attempt,
                                         outcome=outcome.status, error=error,
                                         output=outcome.output))

    # --- approval gates ------------------------------------------------------------------
    async def _gate(self, step_id: str, attempt: int, action: str, *,
                    approver: str | None = None, comment: str | None = None,
                    signal_id: str | None = None, reason: str | None = None,
                    output: dict[str, Any] | None = None) -> StepOutcome:
        result: StepOutcome = await workflow.execute_local_activity(
            ACT_GATE,
            GateInput(self._invocation(self._spec(step_id), attempt), action,
                      approver=approver, comment=comment, signal_id=signal_id, reason=reason,
                      output=output),
            result_type=StepOutcome,
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )
        return result

    async def _resolve_gate(self, cmd: ResolveGate) -> None:
        self._gates.pop(cmd.step_id, None)
        self._unfed.add(cmd.step_id)
        outcome = await self._gate(cmd.step_id, cmd.logical_attempt_id,
                                   "approve" if cmd.approve else "reject",
                                   approver=cmd.approver, comment=cmd.comment,
                                   signal_id=cmd.signal_id, output=cmd.output)
        self._settle(cmd.step_id, cmd.logical_attempt_id, outcome)

    async def _close_gate(self, step_id: str, attempt: int, action: str,
                          reason: str | None) -> None:
        self._gates.pop(step_id, None)
        self._unfed.add(step_id)
        outcome = await self._gate(step_id, attempt, action, reason=reason)
        self._settle(step_id, attempt, outcome)

    async def _cancel_steps(self, cmd: CancelSteps) -> None:
        for step_id in cmd.step_ids:
            deferred = [d for d in self._deferred if d.step_id == step_id]
            if deferred:
                # Never started: nothing to stop and nothing to record.
                self._deferred = [d for d in self._deferred if d.step_id != step_id]
                self._queue.append(WorkflowInput("settled", step_id=step_id,
                                          attempt=deferred[0].logical_attempt_id,
                                          outcome=self._unstarted_outcome()))
            elif step_id in self._gates:
                attempt = self._gates[step_id]
                self._activities[step_id] = asyncio.create_task(
                    self._close_gate(step_id, attempt, "cancel", cmd.reason)
                )
            elif step_id in self._activities:
                self._cancel_asked[step_id] = cmd.reason
                self._activities[step_id].cancel()

    # --- timers --------------------------------------------------------------------------
    def _arm_timer(self, name: str, fire_at_ms: int) -> None:
        self._timers[name] = fire_at_ms

        async def fire() -> None:
            delay = fire_at_ms - int(workflow.now().timestamp() * 1000)
            if delay > 0:
                await workflow.sleep(timedelta(milliseconds=delay))
            self._queue.append(WorkflowInput("timer", timer=name))

        self._timer_tasks[name] = asyncio.create_task(fire())

    # --- endings -------------------------------------------------------------------------
    async def _finish(self, cmd: Finish) -> None:
        await self._event(cmd.event_type, dict(cmd.payload))
        for task in self._timer_tasks.values():
            task.cancel()
        payload = dict(cmd.payload)
        status = {"RunCompleted": "COMPLETED", "RunFailed": "FAILED",
                  "RunCancelled": "CANCELLED"}[cmd.event_type]
        self._finished = self._result(status, payload.get("stepId"), payload.get("code"))

    def _result(self, status: str, step_id: str | None, code: str | None) -> RunResult:
        assert self._inp is not None
        return RunResult(run_id=str(self._inp.context["runId"]), status=status,
                         failure_step_id=step_id, failure_code=code,
                         generations=self._generation + 1)

    # --- continue-as-new -----------------------------------------------------------------
    def _budget_spent(self) -> bool:
        """This workflow run has started its share of steps or grown its history enough."""
        assert self._inp is not None
        return budget_spent(self._inp.config, workflow.info(), self._started_this_generation,
                            size_budget=self._size_budget, base=self._history_base)

    def _can_now(self) -> bool:
        """Time to continue as new: over budget, and no activity is running."""
        if self._finished is not None or self._activities or self._queue or self._order.waiting:
            return False
        assert self._inp is not None
        return bool(self._deferred) or continue_now(
            self._inp.config, workflow.info(), self._started_this_generation,
            size_budget=self._size_budget, base=self._history_base)

    def _continue_as_new(self) -> None:
        assert self._inp is not None
        assert self._interp is not None
        cursor = Cursor(
            generation=self._generation + 1,
            interpreter=self._interp.to_cursor(compact=self._compact),
            pending_starts=[[d.step_id, d.logical_attempt_id] for d in self._deferred],
            gates=[[k, v] for k, v in self._gates.items()],
            timers=[[k, v] for k, v in self._timers.items()],
            # Only recent ids are needed: the engine never redelivers old signals.
            applied_signals=self._applied[-200:],
            signal_seq=self._order.applied_seq,
        )
        if self._compact and not workflow.unsafe.is_replaying():
            leave(workflow.info().run_id, self._interp)
        workflow.continue_as_new(
            RunInput(self._inp.plan_ref, self._inp.context, self._inp.engine_run_ref,
                     self._inp.config, cursor)
        )

    async def _resume(self, cursor: Cursor) -> None:
        for step_id, attempt in cursor.gates:
            self._gates[str(step_id)] = int(attempt)
        for name, fire_at in cursor.timers:
            self._arm_timer(str(name), int(fire_at))
        for step_id, attempt in cursor.pending_starts:
            self._start_step(StartStep(str(step_id), int(attempt)))

    # --- bookkeeping ---------------------------------------------------------------------
    async def _event(
        self,
        event_type: str,
        payload: dict[str, Any],
        *,
        discriminator: int = 1,
        step_id: str | None = None,
        attempt: int = 1,
        signal_id: str | None = None,
        tolerate_illegal: bool = False,
    ) -> int:
        """Append one event through dvt.run_event; its runSeq (0: refused, when tolerated)."""
        assert self._inp is not None
        seq = await workflow.execute_local_activity(
            ACT_RUN_EVENT,
            RunEventInput(
                self._inp.context, self._inp.plan_ref, event_type, payload,
                discriminator=discriminator, step_id=step_id, logical_attempt_id=attempt,
                caused_by_signal_id=signal_id, tolerate_illegal=tolerate_illegal,
            ),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )
        return int(seq or 0)
