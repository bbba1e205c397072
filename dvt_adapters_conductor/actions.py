"""Carrying out the interpreter's commands with Conductor's own operations.

The interpreter decides; this module only translates: StartStep opens a branch's gate (or wakes
a parked task for a later logical attempt), a decided approval gate closes its HUMAN task, a
finished run ends its workflow. Settlements feed back into the interpreter, which maps them
(:mod:`dvt_engine.rules.settlement`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from dvt_adapters_conductor.api import TERMINAL_TASK, TERMINAL_WORKFLOW, ConductorApiError
from dvt_adapters_conductor.mapping import gate_ref, step_ref
from dvt_adapters_conductor.runs import (
    FINISHED_REASON_PREFIX,
    ReconcileResult,
    RunAccess,
    RunContext,
    tasks_by_ref,
)
from dvt_engine.errors import DvtError, ErrorCode
from dvt_engine.eventlog import EventFactory
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
from dvt_engine.models.run import RunStatus, StepStatus
from dvt_engine.models.snapshot import RunSnapshot, StepError
from dvt_engine.rules.settlement import settlement_of
from dvt_engine.rules.signals import is_gate
from dvt_engine.steps.runner import StepOutcome

#: The output key of a step task the coordinator completed for a cancelled join loser (plan v1.3),
#: with the reason; its worker's watcher stops the attempt when it sees it.
LOSER_CANCELLED = "loserCancelled"


def _human_task_result(settled: str, error: StepError | None,
                       output: Any) -> tuple[str, dict[str, Any]]:
    """A decided approval step as its HUMAN task's final status and output."""
    if settled == "succeeded":
        return "COMPLETED", {"output": output}
    if settled == "skipped":
        return "COMPLETED", {"status": "SKIPPED"}
    code = error.code if error else str(ErrorCode.STEP_FAILED)
    return "FAILED_WITH_TERMINAL_ERROR", {"errorCode": code}


class ConductorActions(RunAccess):
    """Translates interpreter commands into Conductor task updates and log writes."""

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
        tasks = tasks_by_ref(workflow)
        factory = EventFactory(ctx.header, "engine", clock=self.clock)
        while queue:
            command = queue.pop(0)
            if isinstance(command, StartStep):
                queue += await self._start_step(ctx, interp, command, tasks, workflow, result)
            elif isinstance(command, CancelSteps):
                queue += await self._cancel_losers(ctx, interp, command, tasks, workflow)
                queue += await self._cancel_gates(ctx, interp, command, tasks, workflow)
            elif isinstance(command, WriteStepEvent) and interp.is_cancelled_loser(
                    command.step_id):
                if not await self.append(ctx, factory.command_event(command)):
                    # The loser's attempt settled first: the log keeps its outcome.
                    queue += interp.loser_skip_refused(command.step_id)
            elif isinstance(command, WriteRunEvent | WriteStepEvent | Finish):
                await self.append(ctx, factory.command_event(command))
            elif isinstance(command, ResolveGate):
                outcome = await self.runner.complete_gate(
                    self.invocation(ctx, command.step_id, command.logical_attempt_id),
                    approve=command.approve, approver=command.approver,
                    comment=command.comment, signal_id=command.signal_id,
                    output=command.output)
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

    def _settle(self, interp: RunInterpreter, step_id: str, attempt: int,
                outcome: StepOutcome) -> list[Command]:
        return interp.settle(step_id, attempt, outcome.status, outcome.error, outcome.output)

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
        if step_id not in ctx.index:
            return await self._run_child(ctx, interp, step_id, attempt)
        index = ctx.index[step_id]
        follow: list[Command] = []
        if is_gate(ctx.plan.step(step_id)):
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
                tasks.update(tasks_by_ref(full))
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
            tasks.update(tasks_by_ref(await self.workflow_with_tasks(ctx)))
        step_task = tasks.get(step_ref(index))
        if step_task is not None and step_task.get("status") == "SCHEDULED" \
                and int(step_task.get("callbackAfterSeconds") or 0) > 0:
            await self.api.run(self.api.update_task, wid, step_task["taskId"], "IN_PROGRESS",
                               {"parked": None, "wokenFor": attempt}, callback_after_s=0)
            result.woken_steps.add(step_id)
        return follow

    async def _run_child(self, ctx: RunContext, interp: RunInterpreter, step_id: str,
                         attempt: int) -> list[Command]:
        """Run a forEach child (plan v1.3) here: the static workflow has no task for it.

        The children of one template run one after another in the reconciling process, with
        the step's engine retries; the interpreter still decides every start and skip.
        """
        spec = interp.spec(step_id)
        engine_attempt = 1
        while True:
            outcome = await self.runner.run(
                self.invocation(ctx, step_id, attempt, engine_attempt, spec=spec))
            if outcome.status != "retry":
                return self._settle(interp, step_id, attempt, outcome)
            await asyncio.sleep((outcome.retry_delay_ms or 0) / 1000)
            engine_attempt += 1

    async def wake_parked_steps(self, ctx: RunContext) -> None:
        """Requeue step tasks parked while the run was paused (after RESUME)."""
        workflow = await self.workflow_with_tasks(ctx)
        wid = str(workflow["workflowId"])
        for ref, task in tasks_by_ref(workflow).items():
            if not ref.startswith("s") or task.get("taskType") in ("HUMAN", "WAIT"):
                continue
            if task.get("status") == "SCHEDULED" and \
                    int(task.get("callbackAfterSeconds") or 0) > 0:
                await self.api.run(self.api.update_task, wid, task["taskId"], "IN_PROGRESS",
                                   {"parked": None}, callback_after_s=0)

    async def _task(self, ctx: RunContext, index: int,
                    tasks: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """The step task at plan position ``index``, reading the workflow's tasks when the
        reconcile's copy does not have it yet (``tasks`` is updated)."""
        task = tasks.get(step_ref(index))
        if task is None:
            tasks.update(tasks_by_ref(await self.workflow_with_tasks(ctx)))
            task = tasks.get(step_ref(index))
        return task

    async def _cancel_losers(
        self,
        ctx: RunContext,
        interp: RunInterpreter,
        command: CancelSteps,
        tasks: dict[str, dict[str, Any]],
        workflow: dict[str, Any],
    ) -> list[Command]:
        """Stop running join losers the log has skipped (plan v1.3 ``losers: cancel``).

        A loser's step task is completed here as SKIPPED, so the workflow goes on without it;
        the worker running it sees that (``WorkerHost._watch``) and stops the attempt, whose
        outcome the log then refuses. A gate loser's HUMAN task is closed by ``_settle_humans``
        like any skipped gate. The interpreter settles the loser now, as the log already has.
        """
        follow: list[Command] = []
        for step_id in command.step_ids:
            if not interp.is_cancelled_loser(step_id):
                continue
            index = ctx.index.get(step_id)
            if index is not None and not is_gate(ctx.plan.step(step_id)):
                task = await self._task(ctx, index, tasks)
                if task is not None and task.get("status") not in TERMINAL_TASK:
                    # Not scheduled yet: its worker finds the step decided when it polls it.
                    with contextlib.suppress(DvtError, ConductorApiError):
                        await self.api.run(
                            self.api.update_task, str(workflow["workflowId"]), task["taskId"],
                            "COMPLETED", {"status": "SKIPPED", LOSER_CANCELLED: command.reason})
            follow += interp.step_settled(step_id, interp.steps[step_id].logical_attempt_id,
                                          "refused")
        return follow

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
        task = await self._task(ctx, ctx.index[step_id], tasks)
        if task is None or task.get("status") in TERMINAL_TASK:
            return
        settled = settlement_of(outcome.status, outcome.error)
        status, output = _human_task_result(settled.outcome, settled.error, outcome.output)
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
        tasks = tasks_by_ref(workflow)
        for step_id in pending:
            task = tasks.get(step_ref(ctx.index[step_id]))
            if task is None:
                continue  # not scheduled yet: a later reconcile closes it
            if task.get("status") not in TERMINAL_TASK:
                step = snap.step(step_id)
                if step.status == StepStatus.FAILED:
                    status, output = _human_task_result("failed", step.error, None)
                else:
                    status, output = "COMPLETED", {"status": str(step.status),
                                                   "output": step.output}
                await self.api.run(self.api.update_task, str(workflow["workflowId"]),
                                   task["taskId"], status, output)
            ctx.humans_settled.add(step_id)
