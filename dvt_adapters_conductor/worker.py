"""The worker host: polls dvt's step task types and runs them through the shared step runner.

One asyncio loop per task type long-polls the server (in a thread) and handles each task as its
own asyncio task, up to ``concurrency`` at a time. A step task runs one engine attempt through the
shared StepRunner while a watcher extends its lease and notices a cancelled task. Shutdown is
graceful: polling stops at once, running attempts finish (bounded by ``drain_timeout_s``) and
report to the server.

A lease watcher asks the server to decide workflows whose step task's lease ran out (its worker
died): the server's own sweeper looks at such a workflow only every 60 to 120 s on its SQL queues.
A step's report to the server is retried until the server takes it, so a server that goes away
and comes back never loses one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dvt_adapters_conductor.actions import LOSER_CANCELLED
from dvt_adapters_conductor.api import TERMINAL_TASK, ConductorApiError
from dvt_adapters_conductor.coordinator import RunContext, RunCoordinator, cancel_reason_of
from dvt_adapters_conductor.mapping import MappingOptions
from dvt_engine.errors import EngineUnavailable
from dvt_engine.models.run import RunStatus, StepStatus
from dvt_engine.rules.cancel import DEFAULT_CANCEL_REASON, step_cancel_reason
from dvt_engine.rules.failure import keeps_failed_attempt
from dvt_engine.steps.context import CancelToken
from dvt_engine.steps.runner import StepOutcome
from dvt_engine.waiting import cancel_and_wait, settles_within

logger = logging.getLogger("dvt.conductor.worker")


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker host polls and parks."""

    concurrency: int = 16
    poll_timeout_ms: int = 1000
    #: concurrent long polls per task type; each asks for one task, because the server's
    #: batch poll waits until the whole batch is there (or the timeout passes)
    pollers: int = 3
    #: seconds a step that may not start yet (paused run) waits before it is looked at again
    park_s: int = 2
    #: seconds a failed attempt awaiting an operator waits before it is looked at again
    operator_park_s: int = 30
    #: seconds a task of a run unknown to this worker's store waits before it is polled again
    unknown_run_park_s: int = 600
    #: how often a running step checks whether its task was cancelled
    watch_every_s: float = 0.5
    drain_timeout_s: float = 60.0
    sweep_every_s: float = 0.5
    #: how often the lease watcher looks for step tasks whose lease ran out (0: never)
    lease_check_s: float = 1.0
    #: longest wait between two tries of a report or reconcile while the server is away
    retry_max_s: float = 2.0


class WorkerHost:
    """Runs dvt's Conductor tasks until stopped."""

    def __init__(
        self,
        coordinator: RunCoordinator,
        mapping: MappingOptions,
        options: WorkerOptions | None = None,
        *,
        step_queues: tuple[str, ...] = (),
        worker_id: str | None = None,
        serve_default: bool = True,
    ) -> None:
        self.coordinator = coordinator
        self.api = coordinator.api
        self.mapping = mapping
        self.options = options or WorkerOptions()
        self.worker_id = worker_id or f"dvt-{socket.gethostname()}-{os.getpid()}-" \
                                      f"{uuid.uuid4().hex[:6]}"
        # Without the default type the host runs only routed steps (one resource class's pool).
        self.task_types = [*([mapping.step_type(None)] if serve_default else []),
                           *(mapping.step_type(q) for q in step_queues)]
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(self.options.concurrency)
        self._running: set[asyncio.Task[None]] = set()
        #: ids of the tasks this host runs now (the lease watcher leaves them alone)
        self._held: set[str] = set()
        #: since when (monotonic) the lease watcher reaches the server again after a failure
        self._reachable_since: float | None = float("-inf")
        self._loops: list[asyncio.Task[None]] = []
        self.handled = 0

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> WorkerHost:
        """Start polling every task type and the timer sweeper."""
        self._stopping.clear()
        for task_type in self.task_types:
            for n in range(self.options.pollers):
                self._loops.append(asyncio.create_task(self._poll_loop(task_type),
                                                       name=f"dvt-poll-{task_type}-{n}"))
        self._loops.append(asyncio.create_task(self._sweep_loop(), name="dvt-sweep"))
        if self.options.lease_check_s > 0:
            self._loops.append(asyncio.create_task(self._lease_loop(), name="dvt-lease"))
        return self

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop polling, let running tasks finish (bounded), then return."""
        self._stopping.set()
        # Polls in flight are let finish (bounded by the long-poll timeout), so a task handed
        # out at the last moment is run here rather than waiting for its lease to run out.
        loops, self._loops = self._loops, []
        if loops:
            _done, late = await asyncio.wait(
                loops, timeout=self.options.poll_timeout_ms / 1000 + 5)
            for loop in late:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        timeout = self.options.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        if self._running:
            _done, pending = await asyncio.wait(set(self._running), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def run_forever(self) -> None:
        """Run until cancelled (``dvt worker``); shuts down gracefully."""
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        """Ask ``run_forever`` to shut down (from a signal handler)."""
        self._stopping.set()

    async def __aenter__(self) -> WorkerHost:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- polling -------------------------------------------------------------------------
    async def _poll_loop(self, task_type: str) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            free = self.options.concurrency - len(self._running)
            if free <= 0:
                await asyncio.sleep(0.01)  # a slot frees when a running task ends
                continue
            try:
                polled = await self.api.run(self.api.poll, task_type, self.worker_id, 1,
                                            self.options.poll_timeout_ms)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("poll %s failed: %s", task_type, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for task in polled:
                job = asyncio.create_task(self._handle(task_type, task))
                self._running.add(job)
                job.add_done_callback(self._running.discard)

    async def _sweep_loop(self) -> None:
        """Reconcile runs whose timers (gate or operator timeouts) are due."""
        while not self._stopping.is_set():
            await settles_within(self._stopping.wait(), self.options.sweep_every_s)
            if self._stopping.is_set():
                return
            now = time.monotonic()
            for key, due in list(self.coordinator.timers.items()):
                if due > now:
                    continue
                ctx = await self.coordinator.context(*key)
                if ctx is None:
                    self.coordinator.timers.pop(key, None)
                    continue
                try:
                    await self.coordinator.reconcile(ctx, force=True)
                except Exception as exc:
                    logger.warning("timer reconcile of %s failed: %s", key, exc)

    async def _handle(self, task_type: str, task: dict[str, Any]) -> None:
        task_id = str(task.get("taskId"))
        self._held.add(task_id)
        try:
            await self.handle_step(task)
            self.handled += 1
        except asyncio.CancelledError:
            raise
        except EngineUnavailable as exc:
            # Before the step ran (a step that ran retries its report): the task's lease runs
            # out and the lease watcher has it delivered again.
            logger.warning("task %s (%s) left to its lease, server unreachable: %s",
                           task_id, task_type, exc)
        except Exception:
            # The task stays with the server; its lease runs out and it is delivered again.
            logger.exception("task %s (%s) failed in the worker", task_id, task_type)
        finally:
            self._held.discard(task_id)

    async def _lease_loop(self) -> None:
        """Have the server decide workflows whose step task's lease ran out."""
        while not self._stopping.is_set():
            await settles_within(self._stopping.wait(), self.options.lease_check_s)
            if self._stopping.is_set():
                return
            try:
                await self.check_leases()
            except EngineUnavailable as exc:
                # Once per outage at warning level: the check runs every second.
                log = logger.warning if self._reachable_since is not None else logger.debug
                self._reachable_since = None
                log("lease check failed: %s", exc)
            except Exception as exc:
                logger.warning("lease check failed: %s", exc)

    async def check_leases(self) -> list[str]:
        """Decide the workflows of IN_PROGRESS step tasks not extended for a lease; their ids.

        The server times such a task out on its next decide and schedules the retry that a
        worker then polls; a task whose lease is still running is left as it is (the decide
        itself checks the lease again, with the server's clock).
        """
        found = await self.api.run(self.api.in_progress_tasks, self.task_types)
        if self._reachable_since is None:
            self._reachable_since = time.monotonic()
        if time.monotonic() - self._reachable_since < self.mapping.lease_s:
            # Back from an outage: the workers that hold tasks get a whole lease to extend
            # them before any is taken for lost.
            return []
        lease_ms = self.mapping.lease_s * 1000
        now_ms = time.time() * 1000
        decided: list[str] = []
        for summary in found:
            task_id = str(summary.get("taskId"))
            workflow_id = str(summary.get("workflowId"))
            if task_id in self._held or workflow_id in decided:
                continue
            if now_ms - _epoch_ms(summary.get("startTime")) < lease_ms:
                continue  # polled less than a lease ago: cannot have run out yet
            try:
                task = await self.api.run(self.api.get_task, task_id, 0)
            except ConductorApiError:
                continue  # gone since the index was read
            if task.get("status") != "IN_PROGRESS":
                continue
            last = int(task.get("updateTime") or task.get("startTime") or 0)
            if now_ms - last < lease_ms + 1000 * int(task.get("callbackAfterSeconds") or 0):
                continue
            logger.info("lease of task %s ran out; deciding workflow %s", task_id, workflow_id)
            await self.api.run(self.api.decide, workflow_id)
            decided.append(workflow_id)
        return decided

    async def _update(self, task: dict[str, Any], status: str, output: dict[str, Any] | None = None,
                      **kwargs: Any) -> None:
        """Report to the server; retried until it takes it while it is unreachable.

        Only a refusal ends the tries early (the task is no longer this worker's: the server
        timed it out and scheduled a retry, which reports what the log says).
        """
        delay = 0.2
        while True:
            try:
                await self.api.run(
                    self.api.update_task, str(task["workflowInstanceId"]), str(task["taskId"]),
                    status, output, worker_id=self.worker_id, **kwargs)
                return
            except ConductorApiError as exc:
                logger.info("update of task %s refused: %s", task.get("taskId"), exc)
                return
            except EngineUnavailable as exc:
                logger.warning("report of task %s not delivered, retrying: %s",
                               task.get("taskId"), exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.options.retry_max_s)

    async def _extend_lease(self, task: dict[str, Any]) -> None:
        """One try at extending a running task's lease (the next tick tries again)."""
        try:
            await self.api.run(
                self.api.update_task, str(task["workflowInstanceId"]), str(task["taskId"]),
                "IN_PROGRESS", None, worker_id=self.worker_id, extend_lease=True, retry_s=0)
        except (ConductorApiError, EngineUnavailable) as exc:
            logger.info("lease of task %s not extended: %s", task.get("taskId"), exc)

    async def _context(self, task: dict[str, Any]) -> RunContext | None:
        inp = task.get("inputData") or {}
        ctx = await self.coordinator.context(str(inp.get("tenantId")), str(inp.get("runId")))
        if ctx is not None and not ctx.workflow_id:
            ctx.workflow_id = str(task["workflowInstanceId"])
        return ctx

    # --- steps ---------------------------------------------------------------------------
    async def handle_step(self, task: dict[str, Any]) -> None:
        """Run one engine attempt of a step (or park it, or report what the log says)."""
        ctx = await self._context(task)
        if ctx is None:
            # A run this store does not know (another store sharing the task prefix, or a run
            # whose memory store is gone): put it back for long, so it costs next to nothing.
            await self._update(task, "IN_PROGRESS", {"parked": "unknown run"},
                               callback_after_s=self.options.unknown_run_park_s)
            return
        step_id = str((task.get("inputData") or {}).get("stepId"))
        verdict, snap = await self.coordinator.may_start(ctx, step_id)
        step = snap.step(step_id)
        if verdict == "park":
            if not ctx.plan.step(step_id).depends_on:
                # A first step's task starts with the workflow whatever the interpreter decided;
                # if the process that launched the run did not carry out its first moves (a
                # first step skipped by its condition, say), nothing else would.
                await self.coordinator.reconcile(ctx)
            await self._update(task, "IN_PROGRESS", {"parked": str(snap.status)},
                               callback_after_s=self.options.park_s)
            return
        if verdict == "done":
            await self._report_recorded(ctx, task, snap.status, step.status)
            return
        engine_attempt = int(task.get("retryCount") or 0) + 1
        invocation = self.coordinator.invocation(ctx, step_id, step.logical_attempt_id,
                                                 engine_attempt)
        token = CancelToken()
        watcher = asyncio.create_task(self._watch(task, token))
        try:
            outcome = await self.coordinator.runner.run(invocation, cancel=token)
        finally:
            await cancel_and_wait(watcher)
        # The log first, then the run's next moves, then the server: a crash in between is
        # repaired by redelivery, which finds the outcome already recorded.
        deferred = await self._reconcile_quietly(ctx, defer=True)
        await self._report(ctx, task, outcome)
        if deferred:
            await self._reconcile_if_cancelled(ctx, task)

    async def _reconcile_if_cancelled(self, ctx: RunContext, task: dict[str, Any]) -> None:
        """After a deferred reconcile's report: a workflow terminated meanwhile (a cancel)
        is reconciled in full, which ends the run as cancelled."""
        try:
            state = await self.api.run(self.api.get_workflow_state,
                                       str(task["workflowInstanceId"]))
            cancelled, _reason = cancel_reason_of(state)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.info("status of run %s not read (%s); reconciling", ctx.header.run_id, exc)
            cancelled = True
        if cancelled:
            await self._reconcile_quietly(ctx)

    async def _reconcile_quietly(self, ctx: RunContext, *, defer: bool = False) -> bool:
        """Reconcile, retried while the server is unreachable: a gate this reconcile should
        open has nobody else to open it. Any other failure is logged and the report follows.
        True when the reconcile deferred reading the workflow (see ``reconcile``)."""
        delay = 0.2
        while True:
            try:
                result = await self.coordinator.reconcile(ctx, force=True, defer=defer)
                return result.deferred
            except asyncio.CancelledError:
                raise
            except EngineUnavailable as exc:
                if not exc.retryable:
                    logger.warning("reconcile of run %s failed: %s", ctx.header.run_id, exc)
                    return False
                logger.warning("reconcile of run %s waits for the server: %s",
                               ctx.header.run_id, exc)
            except Exception as exc:
                logger.warning("reconcile of run %s failed: %s", ctx.header.run_id, exc)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.options.retry_max_s)

    async def _report(self, ctx: RunContext, task: dict[str, Any], outcome: StepOutcome) -> None:
        attempt = {"logicalAttemptId": outcome.logical_attempt_id}
        if outcome.status in ("cancelled", "retry") and await self._skipped(ctx, outcome):
            # A join loser stopped after the log skipped it: its end is discarded; the task
            # is done (the coordinator has usually completed it already).
            await self._update(task, "COMPLETED", {**attempt, "status": "SKIPPED"})
            return
        if outcome.status in ("succeeded", "refused"):
            await self._update(task, "COMPLETED", {**attempt, "status": outcome.status})
        elif outcome.status == "retry":
            code = outcome.error.code if outcome.error else "STEP_FAILED"
            await self._update(task, "FAILED", {**attempt, "errorCode": code},
                               reason=outcome.error.message if outcome.error else code)
        elif outcome.status == "failed":
            snap = await self.coordinator.store.get_snapshot(*ctx.key)
            if snap is not None and keeps_failed_attempt(ctx.plan, snap.status.is_terminal):
                # Park the failed attempt: RETRY_STEP wakes this very task for attempt N+1.
                await self._update(task, "IN_PROGRESS", {**attempt, "parked": "operator"},
                                   callback_after_s=self.options.operator_park_s)
                return
            await self._fail_terminally(task, outcome)
        else:
            await self._fail_terminally(task, outcome)

    async def _skipped(self, ctx: RunContext, outcome: StepOutcome) -> bool:
        """Whether the log skipped the outcome's step at its attempt."""
        snap = await self.coordinator.store.get_snapshot(*ctx.key)
        if snap is None:
            return False
        step = snap.step(outcome.step_id)
        return step.status == StepStatus.SKIPPED \
            and step.logical_attempt_id == outcome.logical_attempt_id

    async def _fail_terminally(self, task: dict[str, Any], outcome: StepOutcome) -> None:
        code = outcome.error.code if outcome.error else "STEP_FAILED"
        await self._update(task, "FAILED_WITH_TERMINAL_ERROR",
                           {"logicalAttemptId": outcome.logical_attempt_id, "errorCode": code},
                           reason=outcome.error.message if outcome.error else code)

    async def _report_recorded(
        self, ctx: RunContext, task: dict[str, Any], run_status: RunStatus, status: StepStatus
    ) -> None:
        """A task whose step the log has already decided: report that, or keep it parked."""
        if status == StepStatus.FAILED and keeps_failed_attempt(ctx.plan,
                                                               run_status.is_terminal):
            await self._update(task, "IN_PROGRESS", {"parked": "operator"},
                               callback_after_s=self.options.operator_park_s)
        elif status == StepStatus.FAILED:
            await self._update(task, "FAILED_WITH_TERMINAL_ERROR", {"status": str(status)})
        else:
            await self._update(task, "COMPLETED", {"status": str(status)})
        await self._reconcile_quietly(ctx)

    async def _cancel_reason(self, task: dict[str, Any]) -> str:
        """The reason the run was cancelled with (as the interpreter words it)."""
        try:
            workflow = await self.api.run(self.api.get_workflow_state,
                                          str(task["workflowInstanceId"]))
        except Exception:
            return DEFAULT_CANCEL_REASON
        _cancelled, reason = cancel_reason_of(workflow)
        return step_cancel_reason(reason)

    async def _watch(self, task: dict[str, Any], token: CancelToken) -> None:
        """Extend the task's lease and fire the token when the server cancels the task."""
        lease_every = max(1.0, self.mapping.lease_s / 3)
        last_lease = time.monotonic()
        while True:
            await asyncio.sleep(self.options.watch_every_s)
            try:
                current = await self.api.run(self.api.get_task, str(task["taskId"]), 0)
            except Exception:
                continue
            status = current.get("status")
            if status in TERMINAL_TASK:
                loser = (current.get("outputData") or {}).get(LOSER_CANCELLED)
                if loser:
                    # The coordinator skipped this step as a join loser (plan v1.3).
                    token.cancel(str(loser))
                elif status in ("CANCELED", "SKIPPED"):
                    token.cancel(await self._cancel_reason(task))
                return
            if time.monotonic() - last_lease >= lease_every:
                if await self._workflow_terminated(task):
                    # A terminate that raced a lease extension can leave the task IN_PROGRESS
                    # in a TERMINATED workflow: the workflow's status is the cancel then.
                    token.cancel(await self._cancel_reason(task))
                    return
                await self._extend_lease(task)
                last_lease = time.monotonic()

    async def _workflow_terminated(self, task: dict[str, Any]) -> bool:
        """Whether the task's workflow was cancelled (one try; False when unknown)."""
        try:
            state = await self.api.run(self.api.get_workflow_state,
                                       str(task["workflowInstanceId"]))
        except Exception:
            return False
        return cancel_reason_of(state)[0]


def _epoch_ms(value: Any) -> float:
    """Milliseconds since the epoch of a task summary's time (ISO text or a number); 0 if none."""
    if isinstance(value, (int, float)):
        return float(value)
    if not value:
        return 0.0
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000
    except ValueError:
        return 0.0
