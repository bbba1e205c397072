"""The generic interpreter workflow: one workflow type runs every plan.

Deterministic and sandboxed: every side effect (plan fetch, events, steps) is an activity; the
DAG decisions come from the shared pure scheduler. Behaviour changes are gated with
``workflow.patched`` so running workflows replay unchanged (see docs/temporal.md).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from dvt_adapters_temporal.interpreter import Interpreter
    from dvt_adapters_temporal.wire import (
        ACT_GATE,
        ACT_PREPARE,
        ACT_RUN_EVENT,
        ACT_RUN_STEP,
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
        StepState,
    )

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
        "ILLEGAL_TRANSITION",
        "IDENTIFIER_INVALID",
    ],
)
_BOOKKEEPING_TIMEOUT = timedelta(seconds=60)
# Engine attempts beyond the step's own policy, spent only on lost workers (heartbeat timeouts):
# the step runner decides finality from the step's policy, never from this cap.
_INFRA_EXTRA_ATTEMPTS = 5


@workflow.defn(name=WORKFLOW_NAME, sandboxed=True)
class DvtRunWorkflow:
    """Runs one plan: validates it, walks its DAG, applies operator signals."""

    def __init__(self) -> None:
        self._inbox: list[SignalMessage] = []
        self._applied: list[str] = []
        self._approvals: dict[str, SignalMessage] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._outcomes: dict[str, StepOutcome] = {}
        self._wake = False
        self._status = "PENDING"
        self._substatus: str | None = None
        self._cursor = Cursor()
        self._interp: Interpreter | None = None
        self._started_this_generation = 0

    # --- operator input ------------------------------------------------------------------
    @workflow.signal(name=SIGNAL_NAME)
    def on_signal(self, msg: SignalMessage) -> None:
        """Queue an accepted signal; a redelivered signalId is ignored."""
        if msg.signal_id in self._applied or any(
            m.signal_id == msg.signal_id for m in self._inbox
        ):
            return
        if msg.type == "APPROVE_STEP":
            step_id = str(msg.payload.get("stepId", ""))
            self._approvals.setdefault(step_id, msg)
            self._applied.append(msg.signal_id)
        else:
            self._inbox.append(msg)
        self._wake = True

    @workflow.query(name=STATUS_QUERY)
    def status(self) -> dict[str, Any]:
        """The run status as this workflow sees it, for diagnosis."""
        steps = self._interp.step_states() if self._interp else {}
        return {
            "runId": self._inp.context.get("runId") if hasattr(self, "_inp") else None,
            "status": self._status,
            "substatus": self._substatus,
            "running": sorted(self._running),
            "generation": self._cursor.generation,
            "pauseOrdinal": self._cursor.pause_ordinal,
            "steps": {k: v.status for k, v in steps.items()},
        }

    # --- the run -------------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: RunInput) -> RunResult:
        """Interpret the plan until the run is terminal (or continue as new)."""
        self._inp = inp
        self._cursor = inp.cursor or Cursor()
        self._applied = list(self._cursor.applied_signals)
        first = inp.cursor is None
        prepared: Prepared = await workflow.execute_activity(
            ACT_PREPARE,
            PrepareInput(inp.plan_ref, inp.context, inp.engine_run_ref, first),
            result_type=Prepared,
            start_to_close_timeout=_BOOKKEEPING_TIMEOUT,
            retry_policy=_BOOKKEEPING_RETRY,
        )
        if prepared.refused_code is not None:
            # The plan was refused before any step; RunFailed is already in the log.
            self._status = "FAILED"
            return self._result("FAILED", None, prepared.refused_code)
        if prepared.run_status in ("COMPLETED", "FAILED", "CANCELLED"):
            self._status = prepared.run_status
            return self._result(prepared.run_status, None, None)
        self._interp = Interpreter(prepared.plan, prepared.steps)
        self._status = "PAUSED" if self._cursor.paused else "RUNNING"
        return await self._loop()

    async def _loop(self) -> RunResult:
        interp = self._interp
        assert interp is not None
        cfg = self._inp.config
        while True:
            await self._drain_inbox()
            self._collect_outcomes()
            if self._status == "CANCELLING":
                return await self._finish_cancel()
            draining_for_can = self._should_continue_as_new()
            if self._status == "RUNNING" and not draining_for_can:
                for step_id in interp.ready(exclude=set(self._running)):
                    if self._started_this_generation >= cfg.continue_as_new_after_steps:
                        break
                    self._start_step(step_id)
            verdict = interp.verdict(running=set(self._running))
            if verdict.terminal and not self._running:
                return await self._finish(verdict.status, verdict.step_id, verdict.code,
                                          verdict.message)
            if verdict.awaiting_operator and not self._running:
                await self._enter_awaiting_operator()
            if self._should_continue_as_new() and not self._running and not self._inbox:
                self._continue_as_new()
            timeout = None
            if self._substatus == "AWAITING_OPERATOR" and not self._running:
                timeout = timedelta(milliseconds=interp.operator_timeout_ms)
            try:
                await workflow.wait_condition(lambda: self._wake, timeout=timeout)
            except TimeoutError:
                return await self._finish(
                    "FAILED", None, "OPERATOR_TIMEOUT",
                    "no operator acted before the operator timeout",
                )
            self._wake = False

    # --- steps ---------------------------------------------------------------------------
    def _start_step(self, step_id: str) -> None:
        interp = self._interp
        assert interp is not None
        attempt = interp.mark_running(step_id)
        spec = interp.spec(step_id)
        self._started_this_generation += 1
        self._cursor.steps_started += 1
        if spec["kind"] == "approval":
            coro = self._run_gate(step_id, spec, attempt)
        else:
            coro = self._run_activity(step_id, spec, attempt)
        self._running[step_id] = asyncio.create_task(coro)

    async def _run_activity(self, step_id: str, spec: dict[str, Any], attempt: int) -> None:
        cfg = self._inp.config
        retry = spec.get("retry") or {}
        max_attempts = int(retry.get("maxAttempts", 1))
        timeout_ms = spec.get("timeoutMs")
        policy = RetryPolicy(
            initial_interval=timedelta(milliseconds=max(1, int(retry.get("initialIntervalMs",
                                                                           1000)))),
            backoff_coefficient=float(retry.get("backoffCoefficient", 2.0)),
            maximum_interval=timedelta(
                milliseconds=max(1, int(retry.get("maxIntervalMs", 60000)))
            ),
            maximum_attempts=max_attempts + _INFRA_EXTRA_ATTEMPTS,
            non_retryable_error_types=list(retry.get("nonRetryableErrorCodes", [])),
        )
        queue = spec.get("taskQueue") or cfg.kind_queues.get(spec["kind"]) or cfg.task_queue
        try:
            outcome: StepOutcome = await workflow.execute_activity(
                ACT_RUN_STEP,
                StepInput(self._inp.context, self._inp.plan_ref, spec,
                          self._interp.plan_params if self._interp else {}, attempt),
                result_type=StepOutcome,
                task_queue=queue,
                start_to_close_timeout=timedelta(
                    milliseconds=int(timeout_ms) if timeout_ms else
                    int(cfg.default_step_timeout_s * 1000)
                ),
                heartbeat_timeout=timedelta(seconds=cfg.heartbeat_timeout_s),
                retry_policy=policy,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                outcome = StepOutcome(status="CANCELLED", error_code="STEP_CANCELLED")
            else:
                # The runner wrote StepFailed on its final attempt; this is the same failure.
                outcome = StepOutcome(
                    status="FAILED",
                    error_code=getattr(err.cause, "type", None) or "STEP_FAILED",
                    error_message=str(err.cause or err),
                )
        self._outcomes[step_id] = outcome
        self._wake = True

    async def _run_gate(self, step_id: str, spec: dict[str, Any], attempt: int) -> None:
        await self._gate(spec, attempt, "open")
        timeout_ms = spec.get("timeoutMs")
        try:
            await workflow.wait_condition(
                lambda: step_id in self._approvals or self._status == "CANCELLING",
                timeout=timedelta(milliseconds=int(timeout_ms)) if timeout_ms else None,
            )
        except TimeoutError:
            await self._gate(spec, attempt, "timeout")
            self._outcomes[step_id] = StepOutcome("FAILED", "APPROVAL_TIMEOUT")
            self._wake = True
            return
        if step_id not in self._approvals:
            self._outcomes[step_id] = StepOutcome("CANCELLED", "STEP_CANCELLED")
            self._wake = True
            return
        msg = self._approvals.pop(step_id)
        decision = str(msg.payload.get("decision", "approve"))
        await self._gate(spec, attempt, decision, msg)
        if decision == "approve":
            self._outcomes[step_id] = StepOutcome("SUCCESS")
        else:
            self._outcomes[step_id] = StepOutcome("FAILED", "APPROVAL_REJECTED")
        self._wake = True

    async def _gate(
        self, spec: dict[str, Any], attempt: int, action: str, msg: SignalMessage | None = None
    ) -> None:
        await workflow.execute_activity(
            ACT_GATE,
            GateInput(
                self._inp.context, self._inp.plan_ref, spec, attempt, action,
                approver=msg.actor_id if msg else None,
                comment=msg.payload.get("comment") if msg else None,
                signal_id=msg.signal_id if msg else None,
            ),
            start_to_close_timeout=_BOOKKEEPING_TIMEOUT,
            retry_policy=_BOOKKEEPING_RETRY,
        )

    def _collect_outcomes(self) -> None:
        interp = self._interp
        assert interp is not None
        for step_id in list(self._outcomes):
            outcome = self._outcomes.pop(step_id)
            self._running.pop(step_id, None)
            interp.record(step_id, outcome)

    # --- signals -------------------------------------------------------------------------
    async def _drain_inbox(self) -> None:
        while self._inbox:
            msg = self._inbox.pop(0)
            await self._apply(msg)
            self._applied.append(msg.signal_id)

    async def _apply(self, msg: SignalMessage) -> None:
        interp = self._interp
        assert interp is not None
        kind = msg.type
        if self._status in ("COMPLETED", "FAILED", "CANCELLED", "CANCELLING"):
            return
        if kind == "PAUSE" and self._status == "RUNNING":
            self._cursor.pause_ordinal += 1
            self._cursor.paused = True
            self._status = "PAUSED"
            await self._event("RunPaused", {"ordinal": self._cursor.pause_ordinal,
                                            "reason": msg.payload.get("reason")},
                              discriminator=self._cursor.pause_ordinal, signal=msg)
            if self._inp.config.cancel_in_flight_on_pause:
                for task in self._running.values():
                    task.cancel()
        elif kind == "RESUME" and self._status == "PAUSED":
            self._cursor.paused = False
            self._status = "RUNNING"
            await self._event("RunResumed", {"ordinal": self._cursor.pause_ordinal},
                              discriminator=self._cursor.pause_ordinal, signal=msg)
        elif kind == "CANCEL":
            self._status = "CANCELLING"
            self._cancel_reason = msg.payload.get("reason")
            self._cancel_signal = msg.signal_id
            for task in self._running.values():
                task.cancel()
        elif kind == "RETRY_STEP":
            interp.retry(str(msg.payload["stepId"]))
            self._substatus = None
            self._cursor.awaiting_operator = False
        elif kind == "SKIP_STEP":
            step_id = str(msg.payload["stepId"])
            if interp.can_skip(step_id):
                await self._event(
                    "StepSkipped", {"reason": msg.payload.get("reason") or "skipped by operator"},
                    step_id=step_id, attempt=interp.attempt(step_id), signal=msg,
                )
                interp.skip(step_id)
                self._substatus = None
                self._cursor.awaiting_operator = False

    async def _enter_awaiting_operator(self) -> None:
        if self._cursor.awaiting_operator:
            self._substatus = "AWAITING_OPERATOR"
            return
        self._cursor.awaiting_operator = True
        self._substatus = "AWAITING_OPERATOR"
        await self._event("RunAwaitingOperator", {})

    # --- endings -------------------------------------------------------------------------
    async def _finish_cancel(self) -> RunResult:
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
        self._collect_outcomes()
        await self._event("RunCancelled", {"reason": getattr(self, "_cancel_reason", None)},
                          signal_id=getattr(self, "_cancel_signal", None))
        self._status = "CANCELLED"
        return self._result("CANCELLED", None, None)

    async def _finish(
        self, status: str, step_id: str | None, code: str | None, message: str | None
    ) -> RunResult:
        interp = self._interp
        assert interp is not None
        if status == "COMPLETED":
            counts = interp.counts()
            await self._event("RunCompleted", {"succeeded": counts.get("SUCCESS", 0),
                                               "skipped": counts.get("SKIPPED", 0)})
        else:
            await self._event("RunFailed", {"stepId": step_id, "code": code or "STEP_FAILED",
                                            "message": message or ""})
        self._status = status
        return self._result(status, step_id, code)

    def _result(self, status: str, step_id: str | None, code: str | None) -> RunResult:
        return RunResult(
            run_id=str(self._inp.context["runId"]),
            status=status,
            failure_step_id=step_id,
            failure_code=code,
            generations=self._cursor.generation + 1,
        )

    # --- continue-as-new -----------------------------------------------------------------
    def _should_continue_as_new(self) -> bool:
        cfg = self._inp.config
        if self._started_this_generation >= cfg.continue_as_new_after_steps:
            return True
        info = workflow.info()
        return bool(
            info.get_current_history_size() >= cfg.continue_as_new_history_bytes
            or info.is_continue_as_new_suggested()
        )

    def _continue_as_new(self) -> None:
        cursor = Cursor(
            generation=self._cursor.generation + 1,
            pause_ordinal=self._cursor.pause_ordinal,
            paused=self._cursor.paused,
            awaiting_operator=self._cursor.awaiting_operator,
            # Only recent ids are needed: older signals cannot be redelivered by the engine.
            applied_signals=self._applied[-200:],
            steps_started=self._cursor.steps_started,
        )
        workflow.continue_as_new(
            RunInput(self._inp.plan_ref, self._inp.context, self._inp.engine_run_ref,
                     self._inp.config, cursor)
        )

    # --- bookkeeping ---------------------------------------------------------------------
    async def _event(
        self,
        event_type: str,
        payload: dict[str, Any],
        *,
        discriminator: int = 1,
        step_id: str | None = None,
        attempt: int = 1,
        signal: SignalMessage | None = None,
        signal_id: str | None = None,
    ) -> None:
        await workflow.execute_activity(
            ACT_RUN_EVENT,
            RunEventInput(
                self._inp.context, self._inp.plan_ref, event_type, payload,
                discriminator=discriminator, step_id=step_id, logical_attempt_id=attempt,
                caused_by_signal_id=signal.signal_id if signal else signal_id,
            ),
            start_to_close_timeout=_BOOKKEEPING_TIMEOUT,
            retry_policy=_BOOKKEEPING_RETRY,
        )


__all__ = ["WORKFLOW_NAME", "DvtRunWorkflow", "StepState"]
