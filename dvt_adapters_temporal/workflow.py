"""The generic interpreter workflow: one workflow type runs every plan.

The workflow is a thin, deterministic executor of the shared RunInterpreter: it feeds the
interpreter what happened (a step settled, a gate started waiting, a timer fired, a signal was
accepted) and carries out the commands it returns, in order. Every side effect (plan fetch,
events, steps) is an activity. Behaviour changes are gated with ``workflow.patched`` so running
workflows replay unchanged (see docs/temporal.md).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
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
    from dvt_engine.models.plan import ExecutionPlan
    from dvt_engine.models.snapshot import StepError

WORKFLOW_NAME = "dvt.Run"

# Bookkeeping activities (events, plan) retry until the store is back; they are idempotent.
_BOOKKEEPING_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=[
        "PLAN_URI_NOT_ALLOWED",
        "PLAN_INTEGRITY_VALIDATION_FAILED",
        "PLAN_SCHEMA_VERSION_UNSUPPORTED",
        "SCHEMA_VALIDATION_FAILED",
        "PLAN_INVALID",
        "STEP_KIND_UNKNOWN",
        "CAPABILITY_NOT_SUPPORTED",
        "RUN_NOT_FOUND",
        "IDENTIFIER_INVALID",
    ],
)
_BOOKKEEPING_TIMEOUT = timedelta(seconds=60)
# Engine attempts beyond the step's own policy, spent only on lost workers (heartbeat timeouts):
# the step runner decides finality from the step's policy, never from this cap.
INFRA_EXTRA_ATTEMPTS = 5
_FAIL_FAST_REASON = "run failing (failFast)"

# Behaviour changes since the first recorded histories, each gated so that runs started before
# the change replay unchanged (docs/temporal.md, "Changing the workflow").
PATCH_PAUSE_WAITS_FOR_OPENING_GATES = "dvt-pause-waits-for-opening-gates"
# The history-size budget defers new steps (not only the step count), and a run whose budget
# is spent continues as new as soon as nothing runs, even when no step was deferred.
PATCH_SIZE_BUDGET_DEFERS_STEPS = "dvt-size-budget-defers-steps"
_STEP_SIGNALS = frozenset({"RETRY_STEP", "SKIP_STEP", "APPROVE_STEP"})
# The runner enforces a step's timeoutMs itself; the activity timeout is only a backstop.
_STEP_TIMEOUT_SLACK = timedelta(seconds=60)


@workflow.defn(name=WORKFLOW_NAME, sandboxed=True)
class DvtRunWorkflow:
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
        self._deferred: list[StartStep] = []
        self._timers: dict[str, int] = {}
        self._timer_tasks: dict[str, asyncio.Task[None]] = {}
        self._started_this_generation = 0
        self._interp: RunInterpreter | None = None
        self._inp: RunInput | None = None
        self._generation = 0
        self._finished: RunResult | None = None
        self._size_budget = True

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
    @workflow.run
    async def run(self, inp: RunInput) -> RunResult:
        """Interpret the plan until the run is terminal (or continue as new)."""
        self._inp = inp
        # Decided once per workflow run, so replays of runs begun before a change keep the old
        # behaviour (the marker is in their history, or not).
        self._size_budget = workflow.patched(PATCH_SIZE_BUDGET_DEFERS_STEPS)
        cursor = inp.cursor
        self._generation = cursor.generation if cursor else 0
        if cursor:
            self._applied = list(cursor.applied_signals)
            self._seen_signals.update(self._applied)
        prepared: Prepared = await workflow.execute_local_activity(
            ACT_PREPARE,
            PrepareInput(inp.plan_ref, inp.context, inp.engine_run_ref, cursor is None),
            result_type=Prepared,
            start_to_close_timeout=_BOOKKEEPING_TIMEOUT,
            retry_policy=_BOOKKEEPING_RETRY,
        )
        if prepared.refused_code is not None:
            # The plan was refused before any step; RunFailed is already in the log.
            return self._result("FAILED", None, prepared.refused_code)
        plan = ExecutionPlan.model_validate(prepared.plan)
        if cursor is None:
            self._interp = RunInterpreter(
                plan=plan, cancel_in_flight_on_pause=inp.config.cancel_in_flight_on_pause
            )
            await self._execute(self._interp.begin())
        else:
            self._interp = RunInterpreter.from_cursor(plan, cursor.interpreter)
            await self._resume(cursor)
        while self._finished is None:
            await workflow.wait_condition(lambda: bool(self._queue) or self._can_now())
            if self._queue:
                item = self._queue.pop(0)
                if self._hold(item):
                    continue
                await self._execute(self._feed(item))
                self._release(item)
                if item.signal is not None:
                    self._applied.append(item.signal.signal_id)
            elif self._can_now():
                self._continue_as_new()
        return self._finished

    def _hold(self, item: WorkflowInput) -> bool:
        """Hold a step signal back while that step's outcome is still on its way."""
        msg = item.signal
        if msg is None:
            return False
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
        return self._interp is not None and self._interp.spec(step_id).kind == "approval"

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
            return interp.step_settled(item.step_id, item.attempt, item.outcome,  # type: ignore[arg-type]
                                       item.error)
        if item.kind == "awaiting":
            commands = interp.step_awaiting_approval(item.step_id)
            already = any(isinstance(c, CancelSteps) and item.step_id in c.step_ids
                          for c in commands)
            if (interp.plan.metadata.failure_policy == "failFast" and interp.failure is not None
                    and not interp.is_finished and not already):
                # The run began failing while this gate was opening: a gate cannot finish by
                # itself, so it is cancelled now, as the interpreter does for gates it knew of.
                commands = [*commands, CancelSteps((item.step_id,), _FAIL_FAST_REASON)]
            return commands
        if item.kind == "timer":
            self._timers.pop(item.timer, None)
            self._timer_tasks.pop(item.timer, None)
            return interp.timer_fired(item.timer)
        msg = item.signal
        assert msg is not None
        return interp.signal_accepted(msg.type, msg.payload, signal_id=msg.signal_id,
                                      actor_id=msg.actor_id or "operator")

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
            elif isinstance(cmd, WriteStepEvent):
                await self._event(cmd.event_type, dict(cmd.payload), step_id=cmd.step_id,
                                  attempt=cmd.logical_attempt_id,
                                  signal_id=cmd.caused_by_signal_id)
            elif isinstance(cmd, ResolveGate):
                await self._resolve_gate(cmd)
            elif isinstance(cmd, ExpireGate):
                await self._close_gate(cmd.step_id, cmd.logical_attempt_id, "expire", None)
            elif isinstance(cmd, StartTimer):
                fire_at = int(workflow.now().timestamp() * 1000) + cmd.delay_ms
                self._arm_timer(cmd.name, fire_at)
            elif isinstance(cmd, Finish):
                await self._finish(cmd)
                return

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
        inp = self._inp
        assert inp is not None
        assert self._interp is not None
        ctx, ref = inp.context, inp.plan_ref
        return {
            "tenantId": ctx["tenantId"], "projectId": ctx["projectId"],
            "environmentId": ctx["environmentId"], "runId": ctx["runId"],
            "planId": ref["planId"], "planVersion": ref["planVersion"], "step": spec,
            "planParams": {**self._interp.plan.params, **(ctx.get("params") or {})},
            "logicalAttemptId": attempt, "engineAttemptId": 1,
        }

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
        retry = spec.get("retry") or {}
        policy = RetryPolicy(
            initial_interval=timedelta(milliseconds=max(1, int(retry.get("initialIntervalMs",
                                                                           1000)))),
            backoff_coefficient=float(retry.get("backoffCoefficient", 2.0)),
            maximum_interval=timedelta(milliseconds=max(1, int(retry.get("maxIntervalMs",
                                                                           60000)))),
            maximum_attempts=int(retry.get("maxAttempts", 1)) + INFRA_EXTRA_ATTEMPTS,
            non_retryable_error_types=list(retry.get("nonRetryableErrorCodes", [])),
        )
        timeout_ms = spec.get("timeoutMs")
        timeout = (timedelta(milliseconds=int(timeout_ms)) + _STEP_TIMEOUT_SLACK if timeout_ms
                   else timedelta(seconds=cfg.default_step_timeout_s))
        queue = spec.get("taskQueue") or cfg.kind_queues.get(spec["kind"]) or cfg.task_queue
        try:
            outcome: StepOutcome = await workflow.execute_activity(
                ACT_RUN_STEP,
                StepInput(self._invocation(spec, attempt)),
                result_type=StepOutcome,
                task_queue=queue,
                start_to_close_timeout=timeout,
                heartbeat_timeout=timedelta(seconds=cfg.heartbeat_timeout_s),
                retry_policy=policy,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                outcome = StepOutcome("cancelled", "STEP_CANCELLED", "step cancelled")
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

    def _settle(self, step_id: str, attempt: int, outcome: StepOutcome) -> None:
        status = outcome.status
        settled = status if status in ("succeeded", "failed", "cancelled", "refused") else "failed"
        error = None
        if outcome.error_code is not None:
            error = StepError(code=outcome.error_code, message=outcome.error_message or "",
                              retryable=outcome.retryable)
        elif settled == "failed":
            error = StepError(code="STEP_FAILED", message=status)
        self._queue.append(WorkflowInput("settled", step_id=step_id, attempt=attempt,
                                         outcome=settled, error=error))

    # --- approval gates ------------------------------------------------------------------
    async def _gate(self, step_id: str, attempt: int, action: str, *,
                    approver: str | None = None, comment: str | None = None,
                    signal_id: str | None = None, reason: str | None = None) -> StepOutcome:
        result: StepOutcome = await workflow.execute_local_activity(
            ACT_GATE,
            GateInput(self._invocation(self._spec(step_id), attempt), action,
                      approver=approver, comment=comment, signal_id=signal_id, reason=reason),
            result_type=StepOutcome,
            start_to_close_timeout=_BOOKKEEPING_TIMEOUT,
            retry_policy=_BOOKKEEPING_RETRY,
        )
        return result

    async def _resolve_gate(self, cmd: ResolveGate) -> None:
        self._gates.pop(cmd.step_id, None)
        self._unfed.add(cmd.step_id)
        outcome = await self._gate(cmd.step_id, cmd.logical_attempt_id,
                                   "approve" if cmd.approve else "reject",
                                   approver=cmd.approver, comment=cmd.comment,
                                   signal_id=cmd.signal_id)
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
                                          outcome="cancelled"))
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
        cfg = self._inp.config
        if self._started_this_generation >= cfg.continue_as_new_after_steps:
            return True
        if not self._size_budget:
            return False  # runs begun before the size budget: the step count alone
        if self._started_this_generation == 0:
            return False  # always make progress, however large the carried state is
        info = workflow.info()
        return bool(info.get_current_history_size() >= cfg.continue_as_new_history_bytes
                    or info.is_continue_as_new_suggested())

    def _can_now(self) -> bool:
        """Time to continue as new: over budget, and no activity is running."""
        if self._finished is not None or self._activities or self._queue:
            return False
        if self._size_budget:
            return bool(self._deferred) or self._budget_spent()
        # Runs begun before the size budget continue only for steps they deferred, or when
        # the history estimate says so.
        info = workflow.info()
        return bool(self._deferred) or bool(
            self._started_this_generation > 0
            and (info.get_current_history_size()
                 >= self._inp.config.continue_as_new_history_bytes  # type: ignore[union-attr]
                 or info.is_continue_as_new_suggested()))

    def _continue_as_new(self) -> None:
        assert self._inp is not None
        assert self._interp is not None
        cursor = Cursor(
            generation=self._generation + 1,
            interpreter=self._interp.to_cursor(),
            pending_starts=[[d.step_id, d.logical_attempt_id] for d in self._deferred],
            gates=[[k, v] for k, v in self._gates.items()],
            timers=[[k, v] for k, v in self._timers.items()],
            # Only recent ids are needed: the engine never redelivers old signals.
            applied_signals=self._applied[-200:],
        )
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
    ) -> None:
        assert self._inp is not None
        await workflow.execute_local_activity(
            ACT_RUN_EVENT,
            RunEventInput(
                self._inp.context, self._inp.plan_ref, event_type, payload,
                discriminator=discriminator, step_id=step_id, logical_attempt_id=attempt,
                caused_by_signal_id=signal_id, tolerate_illegal=tolerate_illegal,
            ),
            start_to_close_timeout=_BOOKKEEPING_TIMEOUT,
            retry_policy=_BOOKKEEPING_RETRY,
        )
