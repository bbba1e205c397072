"""Whether a step may start now: the workers' question, answered by the shared interpreter.

Conductor starts a step's task on its own when the step is chained after its only dependency
(see :mod:`~dvt_adapters_conductor.mapping`); a gated step's task starts when dvt opens its gate.
Either way the worker asks here before running it, and the answer is the interpreter's: the
interpreter rebuilt from the log is asked whether it starts the step now, or whether it started
it as that dependency settled. Nothing here restates a scheduling or failure rule.
"""

from __future__ import annotations

from dvt_adapters_conductor.api import TERMINAL_TASK
from dvt_adapters_conductor.mapping import gate_ref, step_ref
from dvt_adapters_conductor.runs import RunAccess, RunContext, tasks_by_ref
from dvt_engine.interpreter import RunInterpreter
from dvt_engine.models.events import Event, EventType
from dvt_engine.models.run import RunStatus, StepStatus
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.projector import project


class StartQuestions(RunAccess):
    """Answers "may this step task run now" from the log, through the interpreter."""

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
        if ctx.plan.step(step_id).for_each is not None:
            # A forEach template (plan v1.3) is expanded and completed by the coordinator;
            # its task only reports the recorded outcome once there is one.
            unsettled = step.status in (StepStatus.PENDING, StepStatus.RUNNING)
            return ("park" if unsettled else "done"), snap
        if step.status == StepStatus.RUNNING:
            return "run", snap  # a redelivered attempt: resume it (the runner is idempotent)
        if step.status != StepStatus.PENDING:
            return "done", snap
        index = ctx.index[step_id]
        if step.logical_attempt_id > 1 or index in ctx.gated:
            return "run", snap
        if await self._would_start(ctx, snap, step_id):
            return "run", snap
        events = await self.store.fetch_events(*ctx.key)
        if self.started_with_dependency(ctx, events, step_id):
            return "run", snap
        return "park", snap

    async def _would_start(self, ctx: RunContext, snap: RunSnapshot, step_id: str) -> bool:
        """Whether the interpreter at ``snap`` starts the step on its next move.

        The run's cached interpreter is used under the run's lock; while a reconcile holds the
        lock (and is moving that interpreter), one is built for this question alone.
        """
        lock = self._lock(ctx.key)
        if lock.locked():
            # A plan with forEach needs the log: its expansions (the children) are only there.
            expands = any(s.for_each is not None for s in ctx.plan.steps)
            events = await self.store.fetch_events(*ctx.key) if expands else []
            return RunInterpreter.from_snapshot(
                ctx.plan, snap, events, run_params=ctx.header.params).would_start(step_id)
        async with lock:
            interp = await self.interpreters.get(ctx.key, ctx.plan, snap, None,
                                                 ctx.header.params)
            return interp.would_start(step_id)

    def started_with_dependency(self, ctx: RunContext, events: list[Event], step_id: str) -> bool:
        """Whether the interpreter started a chained step as the step it is chained after last
        settled (a first step: as the run started), the moment the server started its task,
        asked of the interpreter rebuilt at that point."""
        if not ctx.plan.step(step_id).depends_on:
            # A first step: its task started with the workflow, but the interpreter started
            # only the first steps that fit the limits, in the ready order (plan v1.3).
            settled = [e for e in events if e.event_type == EventType.RUN_STARTED]
            if not settled or settled[0].run_seq is None:
                return True
            settled = settled[:1]
        else:
            prior = ctx.after.get(ctx.index[step_id])
            if prior is None:
                return False
            previous = ctx.plan.steps[prior].step_id
            settled = [e for e in events if e.step_id == previous and e.event_type in (
                EventType.STEP_COMPLETED, EventType.STEP_SKIPPED)]
        if not settled or settled[-1].run_seq is None:
            return False
        cut = settled[-1].run_seq
        before = [e for e in events if (e.run_seq or 0) <= cut]
        return RunInterpreter.from_snapshot(
            ctx.plan, project(ctx.header, before), before,
            run_params=ctx.header.params).would_start(step_id)

    async def decided_not_started(
        self, ctx: RunContext, snap: RunSnapshot, events: list[Event]
    ) -> list[str]:
        """PENDING steps whose start is already carried out (gate open, or chained and due)
        though their worker has not written StepStarted yet."""
        pending = [s for s in snap.steps if s.status == StepStatus.PENDING]
        if not pending:
            return []
        tasks = tasks_by_ref(await self.workflow_with_tasks(ctx))
        found: list[str] = []
        log = events or await self.store.fetch_events(*ctx.key)
        for step in pending:
            if step.step_id not in ctx.index:
                continue  # a forEach child: run by the coordinator, it has no task
            index = ctx.index[step.step_id]
            task = tasks.get(step_ref(index))
            if index in ctx.gated and step.logical_attempt_id == 1:
                gate = tasks.get(gate_ref(index))
                if gate is not None and gate.get("status") == "COMPLETED" and not (
                        task is not None and task.get("status") in TERMINAL_TASK):
                    found.append(step.step_id)
            elif index not in ctx.gated and step.logical_attempt_id == 1 and task is not None \
                    and task.get("status") not in TERMINAL_TASK \
                    and self.started_with_dependency(ctx, log, step.step_id):
                found.append(step.step_id)
        return found

    async def rebuild(
        self, ctx: RunContext, snap: RunSnapshot, events: list[Event], *, cancelled: bool,
        eager: bool = False,
    ) -> RunInterpreter:
        """The shared interpreter as rebuilt from the log (the run's cached one, followed along
        the log: see :mod:`~dvt_adapters_conductor.interpreters`; callers hold the run's lock),
        with every step whose start was already carried out counted as running, as the
        interpreter that started it counts it.

        Without them a rebuilt interpreter could end a failing run while a sibling it had
        already started is still due to run. Finding them costs a read of the task list, so it
        is done only when the run has a failure, or ``eager`` (a signal about to be applied may
        make it fail). A cancelled workflow runs nothing more: then they are left out.
        """
        interp = await self.interpreters.get(ctx.key, ctx.plan, snap, events or None,
                                             ctx.header.params)
        if cancelled or interp.is_finished or not (eager or interp.failure is not None):
            return interp
        interp.mark_started(await self.decided_not_started(ctx, snap, events))
        return interp
