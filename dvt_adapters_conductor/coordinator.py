"""The run coordinator: turns the store's truth into Conductor actions, from any process.

Conductor runs the tasks; dvt's shared RunInterpreter decides what may start. Whoever notices
something first (the engine after a signal, a worker after a step settled, a parked gate being
redelivered) calls :meth:`RunCoordinator.reconcile`: it rebuilds the interpreter from the run's
snapshot, asks it what to do next, and carries the commands out (open gates, write run-level
events, resolve approval gates, end the Conductor workflow). Every write is keyed by the contract's
idempotency keys, so two processes reconciling the same run at once write each event once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dvt_adapters_conductor.api import TERMINAL_TASK, TERMINAL_WORKFLOW, ConductorApi
from dvt_adapters_conductor.mapping import gate_ref, gated_positions, step_ref, workflow_name
from dvt_engine.errors import DvtError, IllegalTransition
from dvt_engine.eventlog import EventFactory, RunWriter
from dvt_engine.interpreter import (
    GATE_TIMER_PREFIX,
    OPERATOR_TIMER_PREFIX,
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
from dvt_engine.models.events import Event, EventType
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import ConductorRunRef, RunHeader, RunStatus, StepStatus
from dvt_engine.models.snapshot import RunSnapshot, StepError
from dvt_engine.ports import RunStateStore
from dvt_engine.projector import project
from dvt_engine.statemachine import RUN_AWAITING_OPERATOR
from dvt_engine.steps.builtins import APPROVAL_KIND
from dvt_engine.steps.runner import StepInvocation, StepOutcome, StepRunner, gate_timeout_ms

logger = logging.getLogger("dvt.conductor")

ENGINE_NAME = "conductor"
CANCEL_REASON_PREFIX = "dvt:cancel:"
FINISHED_REASON_PREFIX = "dvt:finished:"

PlanLoader = Callable[[RunHeader], Awaitable[ExecutionPlan]]


@dataclass
class RunContext:
    """What every process needs to act for one run (cached per process)."""

    header: RunHeader
    plan: ExecutionPlan
    workflow_name: str
    workflow_id: str | None = None
    index: dict[str, int] = field(default_factory=dict)
    #: plan positions of the steps that head a branch (only they have a gate)
    gated: set[int] = field(default_factory=set)
    #: approval steps, and those whose HUMAN task is known to be closed
    approvals: set[str] = field(default_factory=set)
    humans_settled: set[str] = field(default_factory=set)
    #: gate task ids by reference name: created with the fork, they never change
    gate_ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {s.step_id: i for i, s in enumerate(self.plan.steps)}
        self.gated = gated_positions(self.plan)
        self.approvals = {s.step_id for s in self.plan.steps if s.kind == APPROVAL_KIND}

    @property
    def key(self) -> tuple[str, str]:
        """(tenantId, runId)."""
        return (self.header.tenant_id, self.header.run_id)


@dataclass
class ReconcileResult:
    """What one reconcile did (for the caller that triggered it)."""

    opened_gates: set[str] = field(default_factory=set)
    woken_steps: set[str] = field(default_factory=set)
    snapshot: RunSnapshot | None = None
    #: gate openings not yet awaited
    pending: list[Awaitable[Any]] = field(default_factory=list)


def cancel_reason_of(workflow: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Whether the Conductor workflow was cancelled (terminated not by dvt's own finish)."""
    if workflow.get("status") != "TERMINATED":
        return False, None
    reason = str(workflow.get("reasonForIncompletion") or "")
    if reason.startswith(FINISHED_REASON_PREFIX):
        return False, None
    if reason.startswith(CANCEL_REASON_PREFIX):
        return True, reason[len(CANCEL_REASON_PREFIX):] or None
    # Terminated from outside dvt (UI, REST): that is a cancel too.
    return True, reason or None


class RunCoordinator:
    """Reconciles runs between the store and the Conductor server."""

    def __init__(
        self,
        store: RunStateStore,
        api: ConductorApi,
        runner: StepRunner,
        load_plan: PlanLoader,
        *,
        task_prefix: str = "dvt",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.api = api
        self.runner = runner
        self._load_plan = load_plan
        self.task_prefix = task_prefix
        self.gate_type = f"{task_prefix}_gate"
        self.clock = clock or (lambda: datetime.now(UTC))
        self._contexts: dict[tuple[str, str], RunContext] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        #: (tenantId, runId) -> monotonic deadline of its next timer, for the sweeper
        self.timers: dict[tuple[str, str], float] = {}

    # --- run context ---------------------------------------------------------------------
    async def context(self, tenant_id: str, run_id: str) -> RunContext | None:
        """The cached context of a run, or None when the store does not know it."""
        key = (tenant_id, run_id)
        ctx = self._contexts.get(key)
        if ctx is not None:
            return ctx
        header = await self.store.get_run(tenant_id, run_id)
        if header is None:
            return None
        plan = await self._load_plan(header)
        ctx = RunContext(header, plan, workflow_name(plan.metadata.plan_id, self.task_prefix))
        if len(self._contexts) > 5000:
            self._contexts.clear()
        self._contexts[key] = ctx
        return ctx

    def remember(self, ctx: RunContext) -> None:
        """Cache a context built by the engine at launch."""
        self._contexts[ctx.key] = ctx

    def run_ref(self, ctx: RunContext) -> ConductorRunRef:
        """The engine reference of a run."""
        return ConductorRunRef(server_url=self.api.server_url,
                               workflow_id=ctx.workflow_id or "", run_id=ctx.header.run_id)

    async def workflow_id(self, ctx: RunContext) -> str | None:
        """The Conductor workflow of a run: from RunStarted, else by correlation id (runId)."""
        if ctx.workflow_id:
            return ctx.workflow_id
        snap = await self.store.get_snapshot(*ctx.key)
        ref = snap.engine_run_ref if snap is not None else None
        if ref and ref.get("workflowId"):
            ctx.workflow_id = str(ref["workflowId"])
            return ctx.workflow_id
        found = await self.api.run(
            self.api.find_by_correlation, ctx.workflow_name, ctx.header.run_id)
        if found:
            found.sort(key=lambda w: int(w.get("startTime") or 0))
            ctx.workflow_id = str(found[0]["workflowId"])
        return ctx.workflow_id

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    # --- invocations ---------------------------------------------------------------------
    def invocation(self, ctx: RunContext, step_id: str, attempt: int,
                   engine_attempt: int = 1) -> StepInvocation:
        """The step runner's invocation of one attempt."""
        h = ctx.header
        return StepInvocation.for_step(
            h, ctx.plan.step(step_id), plan_params={**ctx.plan.params, **h.params},
            logical_attempt_id=attempt, engine_attempt_id=engine_attempt,
        )

    # --- writing -------------------------------------------------------------------------
    async def append(self, ctx: RunContext, event: Event) -> bool:
        """Append through the state machine; False when the log refused it (someone was first)."""
        try:
            await RunWriter(self.store, ctx.header).append(event)
        except IllegalTransition as exc:
            logger.debug("run %s: %s not written: %s", ctx.header.run_id, event.event_type, exc)
            return False
        return True

    async def write_run_started(self, ctx: RunContext) -> None:
        """RunStarted, once, whichever process gets here first."""
        factory = EventFactory(ctx.header, "engine", clock=self.clock)
        ref = self.run_ref(ctx).model_dump(mode="json", by_alias=True)
        await self.append(ctx, factory.run_event(
            EventType.RUN_STARTED, {"engine": ENGINE_NAME, "engineRunRef": ref}))

    # --- the reconcile loop --------------------------------------------------------------
    async def reconcile(
        self, ctx: RunContext, *, force: bool = False, workflow: dict[str, Any] | None = None
    ) -> ReconcileResult:
        """Bring the Conductor workflow in line with what the interpreter says, once."""
        async with self._lock(ctx.key):
            snap = await self.store.get_snapshot(*ctx.key)
            if snap is None:
                return ReconcileResult()
            now = time.monotonic()
            last = self._last.get(ctx.key)
            fresh = last is not None and last[1] == snap.last_event_seq \
                and now - last[0] < 0.25
            if not force and fresh and ctx.key not in self.timers:
                return ReconcileResult(snapshot=snap)
            result = await self._reconcile(ctx, snap, workflow)
            final = result.snapshot or snap
            self._last[ctx.key] = (time.monotonic(), final.last_event_seq)
            return result

    async def _reconcile(
        self, ctx: RunContext, snap: RunSnapshot, workflow: dict[str, Any] | None
    ) -> ReconcileResult:
        result = ReconcileResult(snapshot=snap)
        wid = await self.workflow_id(ctx)
        if wid is None:
            return result  # launch has not started the workflow yet
        if workflow is None:
            # Without tasks: a large plan's task list is big; gate ids are fetched when needed.
            workflow = await self.api.run(self.api.get_workflow, wid, False)
        self._remember_gates(ctx, workflow)
        if snap.status.is_terminal:
            await self._end_workflow(ctx, workflow, snap.status)
            return result
        if snap.status in (RunStatus.PENDING, RunStatus.APPROVED):
            await self.write_run_started(ctx)
            snap = await self._snapshot(ctx)
        events = await self._events_if_needed(ctx, snap)
        interp = self.interpreter(ctx, snap, events)
        cancelled, reason = cancel_reason_of(workflow)
        if interp.failure is not None and not cancelled:
            for step_id in await self.decided_not_started(ctx, snap, events):
                state = interp.steps[step_id]
                state.status, state.in_flight = StepStatus.RUNNING, True
        commands: list[Command] = []
        if cancelled:
            commands += interp.cancel(reason)
        elif (ctx.plan.metadata.failure_policy == "failFast" and interp.failure is not None):
            gates = tuple(s for s in interp.in_flight() if interp.steps[s].awaiting_approval)
            if gates:
                commands.append(CancelSteps(gates, "run failing (failFast)"))
        commands += self._due_timers(ctx, interp, events)
        if not cancelled:
            commands += interp.advance()
        await self.execute(ctx, interp, commands, workflow, result)
        result.snapshot = await self._snapshot(ctx)
        await self._settle_humans(ctx, result.snapshot)
        if self.unsettled_humans(ctx, result.snapshot):
            # Its HUMAN task is not scheduled yet: the sweeper looks again shortly.
            self.timers[ctx.key] = min(self.timers.get(ctx.key, float("inf")),
                                       time.monotonic() + 0.5)
        if result.snapshot.status.is_terminal:
            workflow = await self.api.run(self.api.get_workflow, wid, False)
            await self._end_workflow(ctx, workflow, result.snapshot.status)
        return result

    def _remember_gates(self, ctx: RunContext, workflow: Mapping[str, Any]) -> None:
        for task in workflow.get("tasks") or []:
            ref = str(task.get("referenceTaskName") or "")
            if ref.startswith("g") and task.get("taskType") == self.gate_type:
                ctx.gate_ids.setdefault(ref, str(task["taskId"]))

    async def _events_if_needed(self, ctx: RunContext, snap: RunSnapshot) -> list[Event]:
        """The log, read only when timers or operator ordinals depend on it."""
        awaiting = any(s.substatus is not None for s in snap.steps)
        if ctx.plan.metadata.failure_policy == "awaitOperator" or awaiting:
            return await self.store.fetch_events(*ctx.key)
        return []

    async def workflow_with_tasks(self, ctx: RunContext) -> dict[str, Any]:
        """The run's workflow with its task list (and the gate ids remembered)."""
        wid = await self.workflow_id(ctx)
        workflow = await self.api.run(self.api.get_workflow, str(wid), True)
        self._remember_gates(ctx, workflow)
        return workflow

    async def _snapshot(self, ctx: RunContext) -> RunSnapshot:
        snap = await self.store.get_snapshot(*ctx.key)
        assert snap is not None
        return snap

    def interpreter(
        self, ctx: RunContext, snap: RunSnapshot, events: list[Event]
    ) -> RunInterpreter:
        """The shared interpreter, rebuilt from the run's snapshot and log."""
        interp = RunInterpreter.from_snapshot(ctx.plan, snap)
        interp.operator_ordinal = sum(1 for e in events if e.event_type == RUN_AWAITING_OPERATOR)
        return interp

    def _due_timers(
        self, ctx: RunContext, interp: RunInterpreter, events: list[Event]
    ) -> list[Command]:
        """Fire the interpreter's timers whose time has come (durable: computed from the log)."""
        now = self.clock()
        commands: list[Command] = []
        next_due: float | None = None

        def consider(due_at: datetime, name: str) -> None:
            nonlocal next_due
            remaining = (due_at - now).total_seconds()
            if remaining <= 0:
                commands.extend(interp.timer_fired(name))
            else:
                at = time.monotonic() + remaining
                next_due = at if next_due is None else min(next_due, at)

        if interp.awaiting_operator and interp.operator_ordinal:
            marks = [e for e in events if e.event_type == RUN_AWAITING_OPERATOR]
            if marks:
                due = marks[-1].emitted_at.timestamp() + \
                    ctx.plan.metadata.operator_timeout_ms / 1000
                consider(datetime.fromtimestamp(due, UTC),
                         f"{OPERATOR_TIMER_PREFIX}{interp.operator_ordinal}")
        for step_id in interp.in_flight():
            state = interp.steps[step_id]
            if not state.awaiting_approval:
                continue
            timeout = gate_timeout_ms(ctx.plan.step(step_id))
            if timeout is None:
                continue
            opened = [e for e in events if e.event_type == EventType.STEP_AWAITING_APPROVAL
                      and e.step_id == step_id
                      and e.logical_attempt_id == state.logical_attempt_id]
            if opened:
                due = opened[-1].emitted_at.timestamp() + timeout / 1000
                consider(datetime.fromtimestamp(due, UTC),
                         f"{GATE_TIMER_PREFIX}{step_id}:{state.logical_attempt_id}")
        if next_due is None:
            self.timers.pop(ctx.key, None)
        else:
            self.timers[ctx.key] = next_due
        return commands

    # --- carrying out commands -----------------------------------------------------------
    async def execute(
        self,
        ctx: RunContext,
        interp: RunInterpreter,
        commands: list[Command],
        workflow: dict[str, Any],
        result: ReconcileResult,
    ) -> None:
        """Carry out the interpreter's commands in order (settlements feed back in)."""
        try:
            await self._execute(ctx, interp, commands, workflow, result)
        finally:
            pending, result.pending = result.pending, []
            if pending:
                await asyncio.gather(*pending)

    async def _execute(
        self,
        ctx: RunContext,
        interp: RunInterpreter,
        commands: list[Command],
        workflow: dict[str, Any],
        result: ReconcileResult,
    ) -> None:
        queue = list(commands)
        tasks = _tasks_by_ref(workflow)
        factory = EventFactory(ctx.header, "engine", clock=self.clock)
        while queue:
            command = queue.pop(0)
            if isinstance(command, StartStep):
                queue += await self._start_step(ctx, interp, command, tasks, workflow, result)
            elif isinstance(command, CancelSteps):
                queue += await self._cancel_gates(ctx, interp, command, tasks, workflow)
            elif isinstance(command, WriteRunEvent):
                await self.append(ctx, factory.run_event(
                    command.event_type, dict(command.payload),
                    discriminator=command.discriminator,
                    caused_by_signal_id=command.caused_by_signal_id))
            elif isinstance(command, WriteStepEvent):
                await self.append(ctx, factory.step_event(
                    command.event_type, command.step_id, dict(command.payload),
                    logical_attempt_id=command.logical_attempt_id,
                    caused_by_signal_id=command.caused_by_signal_id))
            elif isinstance(command, ResolveGate):
                outcome = await self.runner.complete_gate(
                    self.invocation(ctx, command.step_id, command.logical_attempt_id),
                    approve=command.approve, approver=command.approver,
                    comment=command.comment, signal_id=command.signal_id)
                await self._finish_human(ctx, command.step_id, outcome, tasks, workflow)
                queue += self._settle(interp, command.step_id, command.logical_attempt_id,
                                      outcome)
            elif isinstance(command, ExpireGate):
                outcome = await self.runner.expire_gate(
                    self.invocation(ctx, command.step_id, command.logical_attempt_id))
                await self._finish_human(ctx, command.step_id, outcome, tasks, workflow)
                queue += self._settle(interp, command.step_id, command.logical_attempt_id,
                                      outcome)
            elif isinstance(command, StartTimer):
                # Timers are computed from the log on every reconcile (see _due_timers); the
                # sweeper only needs to know that this run has one pending.
                self.timers.setdefault(ctx.key, time.monotonic() + command.delay_ms / 1000)
            elif isinstance(command, Finish):
                await self.append(ctx, factory.run_event(command.event_type,
                                                         dict(command.payload)))

    def _settle(self, interp: RunInterpreter, step_id: str, attempt: int,
                outcome: StepOutcome) -> list[Command]:
        status = outcome.status
        settled = status if status in ("succeeded", "failed", "cancelled", "refused") else "failed"
        error = outcome.error or (StepError(code="STEP_FAILED", message=status)
                                  if settled == "failed" else None)
        return interp.step_settled(step_id, attempt, settled, error)

    async def _start_step(
        self,
        ctx: RunContext,
        interp: RunInterpreter,
        command: StartStep,
        tasks: dict[str, dict[str, Any]],
        workflow: dict[str, Any],
        result: ReconcileResult,
    ) -> list[Command]:
        step_id, attempt = command.step_id, command.logical_attempt_id
        index = ctx.index[step_id]
        follow: list[Command] = []
        if ctx.plan.step(step_id).kind == APPROVAL_KIND:
            outcome = await self.runner.run(self.invocation(ctx, step_id, attempt))
            if outcome.status == "awaiting_approval":
                follow += interp.step_awaiting_approval(step_id)
            else:
                return self._settle(interp, step_id, attempt, outcome)
        wid = str(workflow["workflowId"])
        if attempt == 1 and index not in ctx.gated:
            return follow  # chained after its only dependency: the server starts it
        if attempt == 1:
            gate_id = ctx.gate_ids.get(gate_ref(index))
            if gate_id is None:
                full = await self.workflow_with_tasks(ctx)
                tasks.update(_tasks_by_ref(full))
                gate_id = ctx.gate_ids.get(gate_ref(index))
            if gate_id is not None:
                # Completing an already completed task is ignored by the server. Gates opened
                # by one reconcile go out together (see execute).
                result.pending.append(self.api.run(
                    self.api.update_task, wid, gate_id, "COMPLETED",
                    {"logicalAttemptId": attempt, "stepId": step_id}))
                result.opened_gates.add(step_id)
            return follow
        # A later logical attempt (RETRY_STEP): wake the parked task of the failed attempt.
        if not tasks:
            tasks.update(_tasks_by_ref(await self.workflow_with_tasks(ctx)))
        step_task = tasks.get(step_ref(index))
        if step_task is not None and step_task.get("status") == "SCHEDULED" \
                and int(step_task.get("callbackAfterSeconds") or 0) > 0:
            await self.api.run(self.api.update_task, wid, step_task["taskId"], "IN_PROGRESS",
                               {"parked": None, "wokenFor": attempt}, callback_after_s=0)
            result.woken_steps.add(step_id)
        return follow

    async def wake_parked_steps(self, ctx: RunContext) -> None:
        """Requeue step tasks parked while the run was paused (after RESUME)."""
        workflow = await self.workflow_with_tasks(ctx)
        wid = str(workflow["workflowId"])
        for ref, task in _tasks_by_ref(workflow).items():
            if not ref.startswith("s") or task.get("taskType") in ("HUMAN", "WAIT"):
                continue
            if task.get("status") == "SCHEDULED" and \
                    int(task.get("callbackAfterSeconds") or 0) > 0:
                await self.api.run(self.api.update_task, wid, task["taskId"], "IN_PROGRESS",
                                   {"parked": None}, callback_after_s=0)

    async def _cancel_gates(
        self,
        ctx: RunContext,
        interp: RunInterpreter,
        command: CancelSteps,
        tasks: dict[str, dict[str, Any]],
        workflow: dict[str, Any],
    ) -> list[Command]:
        """Cancel waiting approval gates here; running SIMPLE steps see their task cancelled."""
        follow: list[Command] = []
        for step_id in command.step_ids:
            state = interp.steps[step_id]
            if not state.awaiting_approval:
                continue
            outcome = await self.runner.cancel_step(
                self.invocation(ctx, step_id, state.logical_attempt_id), reason=command.reason)
            await self._finish_human(ctx, step_id, outcome, tasks, workflow)
            follow += self._settle(interp, step_id, state.logical_attempt_id, outcome)
        return follow

    async def _finish_human(
        self,
        ctx: RunContext,
        step_id: str,
        outcome: StepOutcome,
        tasks: dict[str, dict[str, Any]],
        workflow: dict[str, Any],
    ) -> None:
        """Complete the HUMAN task of an approval gate the way the step runner decided it."""
        task = tasks.get(step_ref(ctx.index[step_id]))
        if task is None:
            tasks.update(_tasks_by_ref(await self.workflow_with_tasks(ctx)))
            task = tasks.get(step_ref(ctx.index[step_id]))
        if task is None or task.get("status") in TERMINAL_TASK:
            return
        if outcome.status == "succeeded":
            status, output = "COMPLETED", {"output": outcome.output}
        else:
            code = outcome.error.code if outcome.error else "STEP_FAILED"
            status, output = "FAILED_WITH_TERMINAL_ERROR", {"errorCode": code}
        with contextlib.suppress(DvtError, Exception):
            await self.api.run(self.api.update_task, str(workflow["workflowId"]),
                                    task["taskId"], status, output)

    async def _end_workflow(
        self, ctx: RunContext, workflow: dict[str, Any], status: RunStatus
    ) -> None:
        """A finished run leaves no live Conductor workflow behind."""
        if workflow.get("status") in TERMINAL_WORKFLOW:
            return
        if status == RunStatus.COMPLETED:
            # The JOIN completes the workflow once every branch is done.
            await self._settle_humans(ctx)
            return
        await self.api.run(self.api.terminate, str(workflow["workflowId"]),
                                f"{FINISHED_REASON_PREFIX}{status}")

    def unsettled_humans(self, ctx: RunContext, snap: RunSnapshot) -> list[str]:
        """Approval steps the log has decided whose HUMAN task is not known to be closed."""
        return [
            s.step_id for s in snap.steps
            if s.step_id in ctx.approvals and s.step_id not in ctx.humans_settled
            and s.status in (StepStatus.SUCCESS, StepStatus.FAILED, StepStatus.SKIPPED)
        ]

    async def _settle_humans(self, ctx: RunContext, snap: RunSnapshot | None = None) -> None:
        """Close the HUMAN task of every decided approval step (it may appear only after the
        decision, when the gate was resolved before the server had scheduled it)."""
        snap = snap or await self._snapshot(ctx)
        pending = self.unsettled_humans(ctx, snap)
        if not pending:
            return
        workflow = await self.workflow_with_tasks(ctx)
        tasks = _tasks_by_ref(workflow)
        for step_id in pending:
            task = tasks.get(step_ref(ctx.index[step_id]))
            if task is None:
                continue  # not scheduled yet: a later reconcile closes it
            if task.get("status") not in TERMINAL_TASK:
                step = snap.step(step_id)
                if step.status == StepStatus.FAILED:
                    status, output = "FAILED_WITH_TERMINAL_ERROR", {
                        "errorCode": step.error.code if step.error else "STEP_FAILED"}
                else:
                    status, output = "COMPLETED", {"status": str(step.status),
                                                   "output": step.output}
                await self.api.run(self.api.update_task, str(workflow["workflowId"]),
                                   task["taskId"], status, output)
            ctx.humans_settled.add(step_id)

    # --- questions workers ask -----------------------------------------------------------
    async def may_start(self, ctx: RunContext, step_id: str) -> tuple[str, RunSnapshot]:
        """Whether a step task may run now: 'run', 'park', 'done' (with the snapshot).

        The start of a step is decided where the interpreter decides it: a gated step's gate
        was opened by a reconcile, a retried attempt was accepted by RETRY_STEP. A step chained
        after its only dependency starts when the interpreter would have started it as that
        dependency settled, or would start it now (after a RESUME, say).
        """
        snap = await self._snapshot(ctx)
        if snap.status in (RunStatus.PENDING, RunStatus.APPROVED):
            # The server started the workflow before launch wrote RunStarted: whoever notices
            # first writes it (once).
            await self.write_run_started(ctx)
            snap = await self._snapshot(ctx)
        step = snap.step(step_id)
        if snap.status.is_terminal:
            return "done", snap
        if step.status == StepStatus.RUNNING:
            return "run", snap  # a redelivered attempt: resume it (the runner is idempotent)
        if step.status != StepStatus.PENDING:
            return "done", snap
        index = ctx.index[step_id]
        if step.logical_attempt_id > 1 or index in ctx.gated:
            return "run", snap
        if self._startable(ctx, snap, step_id):
            return "run", snap
        events = await self.store.fetch_events(*ctx.key)
        if self._startable_when_dependency_settled(ctx, events, step_id):
            return "run", snap
        return "park", snap

    def _startable(self, ctx: RunContext, snap: RunSnapshot, step_id: str) -> bool:
        """Would the interpreter start this step from this snapshot?"""
        if snap.status != RunStatus.RUNNING:
            return False
        if ctx.plan.metadata.failure_policy == "failFast" and any(
                s.status == StepStatus.FAILED for s in snap.steps):
            return False
        statuses = {s.step_id: s.status for s in snap.steps}
        return all(statuses[d].satisfies_dependency
                   for d in ctx.plan.step(step_id).depends_on)

    def _startable_when_dependency_settled(
        self, ctx: RunContext, events: list[Event], step_id: str
    ) -> bool:
        deps = ctx.plan.step(step_id).depends_on
        if not deps:
            return True  # a first step: started with the run
        if len(deps) != 1:
            return False
        settled = [e for e in events if e.step_id == deps[0] and e.event_type in (
            EventType.STEP_COMPLETED, EventType.STEP_SKIPPED)]
        if not settled or settled[-1].run_seq is None:
            return False
        cut = settled[-1].run_seq
        then = project(ctx.header, [e for e in events if (e.run_seq or 0) <= cut])
        return self._startable(ctx, then, step_id)

    async def decided_not_started(
        self, ctx: RunContext, snap: RunSnapshot, events: list[Event]
    ) -> list[str]:
        """PENDING steps whose start is already decided (gate open, or chained and due):
        the interpreter counts them as running, so the run does not end before they do."""
        pending = [s for s in snap.steps if s.status == StepStatus.PENDING]
        if not pending:
            return []
        tasks = _tasks_by_ref(await self.workflow_with_tasks(ctx))
        found: list[str] = []
        log = events or await self.store.fetch_events(*ctx.key)
        for step in pending:
            index = ctx.index[step.step_id]
            task = tasks.get(step_ref(index))
            if index in ctx.gated and step.logical_attempt_id == 1:
                gate = tasks.get(gate_ref(index))
                if gate is not None and gate.get("status") == "COMPLETED" and not (
                        task is not None and task.get("status") in TERMINAL_TASK):
                    found.append(step.step_id)
            elif index not in ctx.gated and step.logical_attempt_id == 1 and task is not None \
                    and task.get("status") not in TERMINAL_TASK \
                    and self._startable_when_dependency_settled(ctx, log, step.step_id):
                found.append(step.step_id)
        return found


def _tasks_by_ref(workflow: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The latest task of every reference name (a retried task replaces its predecessor)."""
    found: dict[str, dict[str, Any]] = {}
    for task in workflow.get("tasks") or []:
        ref = task.get("referenceTaskName")
        if not ref:
            continue
        prev = found.get(ref)
        if prev is None or int(task.get("seq") or 0) >= int(prev.get("seq") or 0):
            found[ref] = task
    return found
