"""The step runner every engine's worker uses: one engine attempt of one step, and its events.

It writes StepStarted once per logical attempt, runs the handler for the step's kind, and writes
StepCompleted, or StepFailed only when the failure is final (contract §3.3). A failure the engine
may still retry writes nothing and comes back as status ``retry`` with the backoff to wait.
Because every event's idempotency key leaves out the engine attempt, an engine that repeats an
attempt (a worker crash, a redelivered task) can never write a second event.

Cancellation: with a CancelToken the runner stops the handler, writes StepFailed STEP_CANCELLED
and returns status ``cancelled``: the clean path for engines. When the task running ``run()`` is
cancelled instead (asyncio.CancelledError), the runner writes the same StepFailed and re-raises,
because swallowing a task's cancellation breaks asyncio's task groups and timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry.trace import Span

from dvt_engine.artifacts import ArtifactStore
from dvt_engine.errors import DvtError, ErrorCode, IllegalTransition, StepCancelled
from dvt_engine.eventlog import EventFactory, RunView, RunWriter
from dvt_engine.idempotency import event_key
from dvt_engine.models.events import AppendResult, Event, EventType
from dvt_engine.models.snapshot import ArtifactRef, Cost, StepError
from dvt_engine.ports import RunStateStore, SecretsProvider, StepResult
from dvt_engine.rules import retries
from dvt_engine.rules.gates import gate_timeout_ms
from dvt_engine.rules.signals import is_gate
from dvt_engine.secrets import EnvSecretsProvider, redact
from dvt_engine.steps.context import CancelToken, RunnerStepContext
from dvt_engine.steps.execute import DEFAULT_STOP_GRACE_S, TokenCancelled, call_handler
from dvt_engine.steps.failure import classify
from dvt_engine.steps.invocation import (
    OutcomeStatus,
    StepInvocation,
    StepOutcome,
    outcome_from_event,
)
from dvt_engine.steps.outputs import (
    artifact_dicts,
    checked_artifacts,
    checked_output,
    held_artifacts,
)
from dvt_engine.steps.registry import HandlerRegistry, default_registry
from dvt_engine.telemetry import (
    ATTR_DUPLICATE,
    ATTR_ERROR_CODE,
    ATTR_OUTCOME,
    step_span,
)

__all__ = [
    "DEFAULT_EMITTED_BY",
    "OutcomeStatus",
    "StepInvocation",
    "StepOutcome",
    "StepRunner",
    "gate_timeout_ms",
]

DEFAULT_EMITTED_BY = "step-runner"
DEFAULT_START_HOLD_S = 0.02

logger = logging.getLogger("dvt.steps")


class StepRunner:
    """Runs engine attempts of steps and writes their events through the state machine."""

    def __init__(
        self,
        store: RunStateStore,
        registry: HandlerRegistry | None = None,
        secrets: SecretsProvider | None = None,
        emitted_by: str = DEFAULT_EMITTED_BY,
        *,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.stop_grace_s = stop_grace_s
        self.registry = registry if registry is not None else default_registry()
        self.secrets = secrets if secrets is not None else EnvSecretsProvider()
        self.emitted_by = emitted_by
        #: How long a step of a run with a view may run before its held StepStarted is written
        #: on its own (a quicker step's StepStarted goes in with its outcome).
        self.start_hold_s = DEFAULT_START_HOLD_S
        #: Views of the runs whose only writer in this process goes through this runner and its
        #: engine, by (tenantId, runId): their appends need no read of the snapshot first.
        self.views: dict[tuple[str, str], RunView] = {}
        #: Views lent to the attempts of runs without one (a worker of an engine whose run
        #: driver lives elsewhere), with how many attempts of the run use it now. An attempt
        #: reads the run once, holds its StepStarted and writes it with the outcome in one
        #: conditional append; attempts of one run in this process share it and take turns.
        self._lent: dict[tuple[str, str], tuple[RunView, int]] = {}

    # --- one engine attempt ------------------------------------------------------------------
    async def run(
        self, invocation: StepInvocation, cancel: CancelToken | None = None
    ) -> StepOutcome:
        """Run one engine attempt of ``invocation.step`` and record what it came to."""
        step = invocation.step
        with step_span(
            invocation,
            step_id=step.step_id,
            kind=step.kind,
            logical_attempt_id=invocation.logical_attempt_id,
            engine_attempt_id=invocation.engine_attempt_id,
        ) as span:
            outcome = await self._run(invocation, cancel if cancel is not None else CancelToken())
            span.set_attribute(ATTR_OUTCOME, outcome.status)
            span.set_attribute(ATTR_DUPLICATE, outcome.duplicate)
            if outcome.error is not None:
                span.set_attribute(ATTR_ERROR_CODE, outcome.error.code)
            logger.debug(
                "step %s attempt %s.%s: %s%s", step.step_id, invocation.logical_attempt_id,
                invocation.engine_attempt_id, outcome.status,
                f" ({outcome.error.code})" if outcome.error else "",
            )
            return outcome

    async def _run(self, inv: StepInvocation, token: CancelToken) -> StepOutcome:
        step = inv.step
        payload: dict[str, Any] = {"kind": step.kind}
        if step.resource_class is not None:
            # Metering prices the attempt by its class from the log alone (dvt_engine/cost.py).
            payload["resourceClass"] = step.resource_class
        started = self._factory(inv).step_event(
            EventType.STEP_STARTED, step.step_id, payload,
            logical_attempt_id=inv.logical_attempt_id, engine_attempt_id=inv.engine_attempt_id,
        )
        if inv.engine_attempt_id == 1 and not is_gate(step) and not token.cancelled:
            with self._view_for(inv) as view:
                writer = RunWriter(self.store, inv, view)
                if await writer.hold(started):
                    return await self._held_attempt(inv, token, writer)
        try:
            result = await self._append(inv, started)
        except IllegalTransition as exc:
            return _refused(inv, exc)
        if result.duplicate:
            recorded = await self.recorded_outcome(inv)
            if recorded is not None:
                return recorded
            if await self._skipped(inv):
                # A join loser cancelled before this attempt began (plan v1.3): nothing to run.
                return _refused(inv, IllegalTransition(
                    f"step {inv.step_id!r} was skipped while attempt "
                    f"{inv.logical_attempt_id} ran"))
        return await self._attempt(inv, token)

    @contextlib.contextmanager
    def _view_for(self, inv: StepInvocation) -> Iterator[RunView]:
        """The run's view: the engine's own, or one lent for as long as this attempt runs."""
        key = (inv.tenant_id, inv.run_id)
        own = self.views.get(key)
        if own is not None:
            yield own
            return
        lent = self._lent.get(key)
        view, users = lent if lent is not None else (RunView(), 0)
        self._lent[key] = (view, users + 1)
        try:
            yield view
        finally:
            view, users = self._lent[key]
            if users > 1:
                self._lent[key] = (view, users - 1)
            else:
                del self._lent[key]

    def _view(self, inv: StepInvocation) -> RunView | None:
        key = (inv.tenant_id, inv.run_id)
        own = self.views.get(key)
        if own is not None:
            return own
        lent = self._lent.get(key)
        return None if lent is None else lent[0]

    async def _held_attempt(
        self, inv: StepInvocation, token: CancelToken, writer: RunWriter
    ) -> StepOutcome:
        """Run the attempt while its StepStarted is held: written with the attempt's outcome in
        one transaction, or on its own once the handler has run for ``start_hold_s``."""
        flusher = asyncio.create_task(_flush_after(writer, self.start_hold_s))
        try:
            return await self._attempt(inv, token)
        finally:
            flusher.cancel()
            # An attempt that ends writing nothing (a retry, a refusal) still records its start.
            # Only then: an idle await here would let a signal reach the engine before the
            # outcome it was decided after.
            if writer.view is not None and writer.view.pending:
                with contextlib.suppress(DvtError):
                    await asyncio.shield(writer.flush())

    async def _attempt(self, inv: StepInvocation, token: CancelToken) -> StepOutcome:
        step = inv.step
        if is_gate(step):
            return await self._open_gate(inv)
        if token.cancelled:
            return await self._cancelled(inv, token.reason)
        ctx = RunnerStepContext(inv, secrets=self.secrets, cancel_token=token,
                                artifacts=self.artifacts)
        began = time.monotonic()
        try:
            handler = self.registry.get(step.kind)
            step_result = await call_handler(handler.run(ctx), token, step.timeout_ms,
                                             stop_grace_s=self.stop_grace_s)
        except asyncio.CancelledError:
            # Record the stop even though the task is going away, then let it go; unless the
            # engine abandoned the attempt and will run it again (then the stop decides nothing).
            if not token.abandoned:
                with contextlib.suppress(asyncio.CancelledError, DvtError):
                    await asyncio.shield(self._cancelled(inv, "the step's task was cancelled"))
            raise
        except TokenCancelled:
            return await self._cancelled(inv, token.reason)
        except StepCancelled as exc:
            # ctx.sleep raises this when the token fires; a handler may also stop on its own.
            reason = token.reason if token.cancelled else exc.message
            return await self._cancelled(
                inv, None if reason is None else str(redact(reason, ctx.resolved_secrets))
            )
        except Exception as exc:
            return await self._failure(inv, classify(exc, step), ctx.resolved_secrets)
        duration_ms = int((time.monotonic() - began) * 1000)
        return await self._success(inv, step_result, ctx.resolved_secrets, duration_ms)

    async def _success(
        self,
        inv: StepInvocation,
        result: StepResult,
        secrets: Sequence[str],
        duration_ms: int,
    ) -> StepOutcome:
        step = inv.step
        try:
            output = checked_output(redact(result.output, secrets))
            artifacts = checked_artifacts(redact(artifact_dicts(result.artifacts), secrets))
            await held_artifacts(artifacts, self.artifacts)
        except DvtError as exc:
            return await self._failure(inv, classify(exc, step), secrets)
        units = result.cost_units
        if units is None and step.cost_hint is not None:
            units = step.cost_hint.units
        cost = Cost(units=units, duration_ms=duration_ms)
        payload = {
            "output": output,
            "artifacts": [a.model_dump(mode="json", exclude_none=True) for a in artifacts],
            "cost": cost.model_dump(mode="json", exclude_none=True),
        }
        return await self._finish(inv, EventType.STEP_COMPLETED, payload, "succeeded",
                                  output=output, artifacts=artifacts)

    async def _failure(
        self, inv: StepInvocation, error: StepError, secrets: Sequence[str]
    ) -> StepOutcome:
        error = StepError(code=error.code, message=str(redact(error.message, secrets)),
                          retryable=error.retryable)
        if not retries.is_final_failure(inv.step, error, inv.engine_attempt_id):
            delay = retries.delay_before_attempt_ms(inv.step, inv.engine_attempt_id + 1)
            return StepOutcome(
                status="retry", final=False, step_id=inv.step_id,
                logical_attempt_id=inv.logical_attempt_id,
                engine_attempt_id=inv.engine_attempt_id, error=error, retry_delay_ms=delay,
            )
        payload = {"error": error.model_dump(mode="json")}
        return await self._finish(inv, EventType.STEP_FAILED, payload, "failed", error=error)

    async def _cancelled(self, inv: StepInvocation, reason: str | None) -> StepOutcome:
        error = StepError(
            code=str(ErrorCode.STEP_CANCELLED),
            message="step was cancelled" + (f": {reason}" if reason else ""),
            retryable=False,
        )
        payload = {"error": error.model_dump(mode="json")}
        event = self._factory(inv).step_event(
            EventType.STEP_FAILED, inv.step_id, payload,
            logical_attempt_id=inv.logical_attempt_id, engine_attempt_id=inv.engine_attempt_id,
        )
        run_seq: int | None = None
        duplicate = False
        try:
            result = await self._append(inv, event)
            run_seq, duplicate = result.run_seq, result.duplicate
        except IllegalTransition:
            # The run ended (or the step was decided) first: there is nothing left to record.
            pass
        return StepOutcome(
            status="cancelled", final=True, step_id=inv.step_id,
            logical_attempt_id=inv.logical_attempt_id, engine_attempt_id=inv.engine_attempt_id,
            error=error, duplicate=duplicate, run_seq=run_seq,
        )

    # --- approval gates --------------------------------------------------------------------
    async def _open_gate(self, inv: StepInvocation) -> StepOutcome:
        payload: dict[str, Any] = {"timeoutMs": gate_timeout_ms(inv.step)}
        if inv.step.wait_for_signal is not None:
            payload["signal"] = inv.step.wait_for_signal.name
        event = self._factory(inv).step_event(
            EventType.STEP_AWAITING_APPROVAL, inv.step_id, payload,
            logical_attempt_id=inv.logical_attempt_id, engine_attempt_id=inv.engine_attempt_id,
        )
        try:
            result = await self._append(inv, event)
        except IllegalTransition as exc:
            return _refused(inv, exc)
        return StepOutcome(
            status="awaiting_approval", final=False, step_id=inv.step_id,
            logical_attempt_id=inv.logical_attempt_id, engine_attempt_id=inv.engine_attempt_id,
            duplicate=result.duplicate, run_seq=result.run_seq,
        )

    async def complete_gate(
        self,
        invocation: StepInvocation,
        *,
        approve: bool,
        approver: str,
        comment: str | None = None,
        signal_id: str | None = None,
        output: dict[str, Any] | None = None,
    ) -> StepOutcome:
        """Resolve an open gate: approve writes StepCompleted, reject APPROVAL_REJECTED.

        ``output`` is a custom signal's data, the output of the signal wait it completes.
        """
        with self._gate_span(invocation) as span:
            if approve:
                if output is None:
                    output = {"approver": approver, "comment": comment, "decision": "approve"}
                outcome = await self._finish(
                    invocation, EventType.STEP_COMPLETED, {"output": output, "artifacts": []},
                    "succeeded", output=output, signal_id=signal_id,
                )
            else:
                error = StepError(
                    code=str(ErrorCode.APPROVAL_REJECTED),
                    message=f"rejected by {approver}" + (f": {comment}" if comment else ""),
                    retryable=False,
                )
                outcome = await self._finish(
                    invocation, EventType.STEP_FAILED, {"error": error.model_dump(mode="json")},
                    "failed", error=error, signal_id=signal_id,
                )
            _mark(span, outcome)
            return outcome

    async def expire_gate(self, invocation: StepInvocation) -> StepOutcome:
        """Close an open gate whose timeoutMs passed: StepFailed APPROVAL_TIMEOUT; a signal wait
        fails with SIGNAL_WAIT_TIMEOUT, or is skipped when its onTimeout says so."""
        with self._gate_span(invocation) as span:
            timeout = gate_timeout_ms(invocation.step)
            wait = invocation.step.wait_for_signal
            if wait is not None:
                outcome = await self._wait_expired(invocation, wait.name, wait.on_timeout,
                                                   timeout)
                _mark(span, outcome)
                return outcome
            error = StepError(
                code=str(ErrorCode.APPROVAL_TIMEOUT),
                message="approval gate timed out"
                + (f" after {timeout} ms" if timeout is not None else ""),
                retryable=False,
            )
            outcome = await self._finish(
                invocation, EventType.STEP_FAILED, {"error": error.model_dump(mode="json")},
                "failed", error=error,
            )
            _mark(span, outcome)
            return outcome

    async def _wait_expired(self, inv: StepInvocation, name: str, on_timeout: str,
                            timeout: int | None) -> StepOutcome:
        waited = f"no signal {name!r} within {timeout} ms"
        if on_timeout == "skip":
            return await self._finish(inv, EventType.STEP_SKIPPED, {"reason": waited}, "skipped")
        error = StepError(code=str(ErrorCode.SIGNAL_WAIT_TIMEOUT), message=waited,
                          retryable=False)
        return await self._finish(inv, EventType.STEP_FAILED,
                                  {"error": error.model_dump(mode="json")}, "failed", error=error)

    async def cancel_step(
        self, invocation: StepInvocation, *, reason: str | None = None
    ) -> StepOutcome:
        """Record that a running step (an open gate, say) was stopped: StepFailed STEP_CANCELLED."""
        with self._gate_span(invocation) as span:
            outcome = await self._cancelled(invocation, reason)
            _mark(span, outcome)
            return outcome

    def _gate_span(self, inv: StepInvocation) -> AbstractContextManager[Span]:
        return step_span(inv, step_id=inv.step_id, kind=inv.step.kind,
                         logical_attempt_id=inv.logical_attempt_id,
                         engine_attempt_id=inv.engine_attempt_id)

    # --- what the log already says ------------------------------------------------------------
    async def recorded_outcome(self, invocation: StepInvocation) -> StepOutcome | None:
        """The decided outcome of this logical attempt if the log holds one, else None."""
        for etype in (EventType.STEP_COMPLETED, EventType.STEP_FAILED):
            key = event_key(invocation.run_id, invocation.step_id, invocation.logical_attempt_id,
                            etype, invocation.plan_version)
            event = await self.store.get_event_by_key(invocation.tenant_id, invocation.run_id, key)
            if event is not None:
                return outcome_from_event(invocation, event)
        return None

    async def _skipped(self, invocation: StepInvocation) -> bool:
        """Whether the log skipped this logical attempt after it started."""
        key = event_key(invocation.run_id, invocation.step_id, invocation.logical_attempt_id,
                        EventType.STEP_SKIPPED, invocation.plan_version)
        return await self.store.get_event_by_key(
            invocation.tenant_id, invocation.run_id, key) is not None

    # --- plumbing ---------------------------------------------------------------------------
    def _factory(self, inv: StepInvocation) -> EventFactory:
        return EventFactory(inv, emitted_by=self.emitted_by)

    async def _append(self, inv: StepInvocation, event: Event) -> AppendResult:
        return await RunWriter(self.store, inv, self._view(inv)).append(event)

    async def _finish(
        self,
        inv: StepInvocation,
        event_type: EventType,
        payload: dict[str, Any],
        status: OutcomeStatus,
        *,
        output: Any = None,
        artifacts: Sequence[ArtifactRef] = (),
        error: StepError | None = None,
        signal_id: str | None = None,
    ) -> StepOutcome:
        """Append the event that decides the logical attempt and report it."""
        event = self._factory(inv).step_event(
            event_type, inv.step_id, payload,
            logical_attempt_id=inv.logical_attempt_id, engine_attempt_id=inv.engine_attempt_id,
            caused_by_signal_id=signal_id,
        )
        try:
            result = await self._append(inv, event)
        except IllegalTransition as exc:
            return _refused(inv, exc)
        if result.duplicate:
            recorded = await self.recorded_outcome(inv)
            if recorded is not None:
                return recorded
        # Report what the log recorded: EventFactory masks secret-looking values in payloads.
        output = event.payload.get("output", output)
        if error is not None and isinstance(event.payload.get("error"), dict):
            error = StepError.model_validate(event.payload["error"])
        return StepOutcome(
            status=status, final=True, step_id=inv.step_id,
            logical_attempt_id=inv.logical_attempt_id, engine_attempt_id=inv.engine_attempt_id,
            output=output, artifacts=tuple(artifacts), error=error,
            duplicate=result.duplicate, run_seq=result.run_seq,
        )


async def _flush_after(writer: RunWriter, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    # Shielded: cancelling this task once the attempt ends must not cut a write in half.
    with contextlib.suppress(DvtError):
        await asyncio.shield(writer.flush())


def _refused(inv: StepInvocation, exc: IllegalTransition) -> StepOutcome:
    return StepOutcome(
        status="refused", final=True, step_id=inv.step_id,
        logical_attempt_id=inv.logical_attempt_id, engine_attempt_id=inv.engine_attempt_id,
        error=StepError(code=str(exc.code), message=exc.message, retryable=False),
    )


def _mark(span: Span, outcome: StepOutcome) -> None:
    span.set_attribute(ATTR_OUTCOME, outcome.status)
    span.set_attribute(ATTR_DUPLICATE, outcome.duplicate)
    if outcome.error is not None:
        span.set_attribute(ATTR_ERROR_CODE, outcome.error.code)
