"""The run coordinator: turns the store's truth into Conductor actions, from any process.

Conductor runs the tasks; dvt's shared RunInterpreter decides what may start. Whoever notices
something first (the engine after a signal, a worker after a step settled, a parked gate being
redelivered) calls :meth:`RunCoordinator.reconcile`: it rebuilds the interpreter from the run's
log, asks it what to do next, and carries the commands out (open gates, write run-level events,
resolve approval gates, end the Conductor workflow). Every write is keyed by the contract's
idempotency keys, so two processes reconciling the same run at once write each event once.

The coordinator's other jobs live beside it: :mod:`~dvt_adapters_conductor.runs` (contexts,
workflows, writes), :mod:`~dvt_adapters_conductor.actions` (carrying out commands) and
:mod:`~dvt_adapters_conductor.starts` (may a step start now).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from dvt_adapters_conductor.actions import ConductorActions
from dvt_adapters_conductor.runs import (
    CANCEL_REASON_PREFIX,
    ENGINE_NAME,
    FINISHED_REASON_PREFIX,
    PlanLoader,
    ReconcileResult,
    RunContext,
    cancel_reason_of,
    tasks_by_ref,
)
from dvt_adapters_conductor.starts import StartQuestions
from dvt_engine.interpreter import Command, RunInterpreter, StartStep
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunStatus
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.rules.failure import awaits_operator

__all__ = [
    "CANCEL_REASON_PREFIX",
    "ENGINE_NAME",
    "FINISHED_REASON_PREFIX",
    "PlanLoader",
    "ReconcileResult",
    "RunContext",
    "RunCoordinator",
    "cancel_reason_of",
    "tasks_by_ref",
]

#: The name engine.py has imported it under.
_tasks_by_ref = tasks_by_ref


class RunCoordinator(ConductorActions, StartQuestions):
    """Reconciles runs between the store and the Conductor server."""

    async def reconcile(
        self, ctx: RunContext, *, force: bool = False, workflow: dict[str, Any] | None = None,
        defer: bool = False,
    ) -> ReconcileResult:
        """Bring the Conductor workflow in line with what the interpreter says, once.

        With ``defer`` (a worker whose step just settled), a reconcile whose moves need nothing
        of the server skips reading the workflow and says so (``deferred``): the worker reports
        first and reads the workflow's status after, which keeps that read off the path from
        one step to the next.
        """
        async with self._lock(ctx.key):
            if defer and workflow is None:
                snap = await self.store.get_snapshot(*ctx.key)
                if snap is not None and await self._server_not_needed(ctx, snap):
                    self._last[ctx.key] = (time.monotonic(), snap.last_event_seq)
                    return ReconcileResult(snapshot=snap, deferred=True)
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
            # Its status only: a large plan's task list and definition are big; gate ids are
            # fetched when needed.
            workflow = await self.api.run(self.api.get_workflow_state, wid)
        self._remember_gates(ctx, workflow)
        if snap.status.is_terminal:
            await self._end_workflow(ctx, workflow, snap.status)
            return result
        if snap.status in (RunStatus.PENDING, RunStatus.APPROVED):
            await self.write_run_started(ctx)
            snap = await self._snapshot(ctx)
        events = await self._events_if_needed(ctx, snap)
        cancelled, reason = cancel_reason_of(workflow)
        interp = await self.rebuild(ctx, snap, events, cancelled=cancelled)
        # A rebuilt interpreter did not see the run's state arise: it says what that state
        # owes (interp.owed) before its next moves.
        commands: list[Command] = interp.cancel(reason) if cancelled else interp.owed()
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
            workflow = await self.api.run(self.api.get_workflow_state, wid)
            await self._end_workflow(ctx, workflow, result.snapshot.status)
        return result

    async def _server_not_needed(self, ctx: RunContext, snap: RunSnapshot) -> bool:
        """Whether the interpreter's next moves, the run not cancelled, need nothing of the
        server: a running run without failure, timers or approvals, whose only moves start
        steps chained after the one that settled (the server starts those itself).

        A cancel cannot hide behind this: it terminates the workflow, which the caller reads
        after its report, and then reconciles in full.
        """
        if snap.status != RunStatus.RUNNING or snap.substatus is not None \
                or awaits_operator(ctx.plan) or ctx.approvals or ctx.key in self.timers:
            return False
        if await self.workflow_id(ctx) is None:
            return False
        interp = await self.interpreters.get(ctx.key, ctx.plan, snap, None, ctx.header.params)
        if interp.failure is not None:
            return False
        for command in interp.owed() + interp.advance():
            if not isinstance(command, StartStep) or command.logical_attempt_id != 1:
                return False
            index = ctx.index.get(command.step_id)
            if index is None or index in ctx.gated:
                return False
        return True

    async def _events_if_needed(self, ctx: RunContext, snap: RunSnapshot) -> list[Event]:
        """The log, read only when timers or operator ordinals depend on it."""
        awaiting = any(s.substatus is not None for s in snap.steps)
        if awaits_operator(ctx.plan) or awaiting:
            return await self.store.fetch_events(*ctx.key)
        return []

    def _due_timers(
        self, ctx: RunContext, interp: RunInterpreter, events: list[Event]
    ) -> list[Command]:
        """Fire the interpreter's timers whose time has come (durable: computed from the log)."""
        now: datetime = self.clock()
        commands: list[Command] = []
        next_due: float | None = None
        for name, due_at in interp.durable_timers(events):
            remaining = (due_at - now).total_seconds()
            if remaining <= 0:
                commands.extend(interp.timer_fired(name))
            else:
                at = time.monotonic() + remaining
                next_due = at if next_due is None else min(next_due, at)
        if next_due is None:
            self.timers.pop(ctx.key, None)
        else:
            self.timers[ctx.key] = next_due
        return commands
