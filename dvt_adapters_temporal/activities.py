"""The interpreter workflow's activities: plan loading, steps, gates and run-level events.

Steps and gates go through the shared StepRunner and events through the shared event factory and
run writer, so the log is the same as on every other engine; idempotency keys make a retried
activity harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from dvt_adapters_temporal import plans
from dvt_adapters_temporal.wire import (
    ACT_GATE,
    ACT_PREPARE,
    ACT_RUN_EVENT,
    ACT_RUN_STEP,
    CANCEL_REASON_QUERY,
    GateInput,
    Prepared,
    PrepareInput,
    RunEventInput,
    StepInput,
    StepOutcome,
)
from dvt_engine.errors import DvtError, IllegalTransition
from dvt_engine.eventlog import EventFactory, RunWriter
from dvt_engine.models.events import EventType
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.ports import RunStateStore
from dvt_engine.rules.cancel import DEFAULT_CANCEL_REASON
from dvt_engine.steps.context import CancelToken
from dvt_engine.steps.runner import StepInvocation, StepRunner
from dvt_engine.steps.runner import StepOutcome as RunnerOutcome

ENGINE_NAME = "temporal"
PLAN_CACHE_SIZE = 64
FAST_HEARTBEAT_S = 0.1
FAST_HEARTBEAT_WINDOW_S = 10.0

PlanLoader = Callable[[PlanRef], Awaitable[ExecutionPlan]]


@dataclass(frozen=True)
class RunIdentity:
    """Whose events these are, built from the workflow input without a store lookup."""

    tenant_id: str
    project_id: str
    environment_id: str
    run_id: str
    plan_id: str
    plan_version: str

    @classmethod
    def of(cls, context: dict[str, Any], plan_ref: dict[str, Any]) -> RunIdentity:
        """Identity from RunContext JSON and PlanRef JSON."""
        return cls(
            tenant_id=str(context["tenantId"]),
            project_id=str(context["projectId"]),
            environment_id=str(context["environmentId"]),
            run_id=str(context["runId"]),
            plan_id=str(plan_ref["planId"]),
            plan_version=str(plan_ref["planVersion"]),
        )


def _app_error(err: DvtError) -> ApplicationError:
    return ApplicationError(err.message, err.to_dict(), type=str(err.code),
                            non_retryable=not err.retryable)


async def _cancel_reason(info: activity.Info, step_id: str) -> str:
    """The reason the workflow recorded for stopping this step (a query; a default if none)."""
    try:
        handle = activity.client().get_workflow_handle(str(info.workflow_id))
        reason = await asyncio.wait_for(handle.query(CANCEL_REASON_QUERY, step_id), 10)
    except Exception:  # the reason is informative only; never block the cancellation on it
        reason = None
    return str(reason) if reason else DEFAULT_CANCEL_REASON


def to_wire(outcome: RunnerOutcome, *, with_output: bool = False) -> StepOutcome:
    """The runner's outcome as the small record the workflow needs."""
    err = outcome.error
    return StepOutcome(
        status=outcome.status,
        error_code=err.code if err else None,
        error_message=err.message if err else None,
        retryable=err.retryable if err else False,
        output=outcome.output if with_output else None,
    )


class TemporalActivities:
    """Activity implementations bound to a store, the shared step runner and a plan loader."""

    def __init__(
        self,
        store: RunStateStore,
        runner: StepRunner,
        load_plan: PlanLoader,
        *,
        heartbeat_every_s: float = 2.0,
    ) -> None:
        self.store = store
        self.runner = runner
        self._load_plan = load_plan
        self._heartbeat_every_s = heartbeat_every_s
        self._checked: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._packed: dict[str, str] = {}

    def all(self) -> list[Callable[..., Any]]:
        """Every activity, for Worker(activities=...)."""
        return [self.prepare, self.run_step, self.run_event, self.gate]

    @activity.defn(name=ACT_PREPARE)
    async def prepare(self, inp: PrepareInput) -> Prepared:
        """Fetch and check the plan; write RunStarted on the first generation."""
        who = RunIdentity.of(inp.context, inp.plan_ref)
        writer = RunWriter(self.store, who)
        factory = EventFactory(who, emitted_by="engine")
        plan_ref = PlanRef.model_validate(inp.plan_ref)
        if not inp.first_generation and plan_ref.sha256 in self._checked:
            # A later run of the chain: these exact bytes (same digest) were fetched and
            # checked when the run started; checking 1,000 steps again each time is waste.
            self._checked.move_to_end(plan_ref.sha256)
            return self._prepared(plan_ref.sha256, inp.packed)
        try:
            plan = await self._load_plan(plan_ref)
        except DvtError as err:
            if err.retryable:
                raise _app_error(err) from err
            # The plan changed or became unreachable after registration: fail the run once.
            with contextlib.suppress(IllegalTransition):
                await writer.append(factory.run_event(
                    EventType.RUN_FAILED,
                    {"stepId": None, "code": str(err.code), "message": err.message},
                ))
            return Prepared(plan={}, refused_code=str(err.code), refused_message=err.message)
        if inp.first_generation:
            await writer.append(factory.run_event(
                EventType.RUN_STARTED,
                {"engine": ENGINE_NAME, "engineRunRef": inp.engine_run_ref},
            ))
        dumped = plan.model_dump(mode="json", by_alias=True, exclude_none=True)
        self._checked[plan_ref.sha256] = dumped
        self._packed.pop(plan_ref.sha256, None)
        while len(self._checked) > PLAN_CACHE_SIZE:
            self._packed.pop(self._checked.popitem(last=False)[0], None)
        return self._prepared(plan_ref.sha256, inp.packed)

    def _prepared(self, sha256: str, packed: bool) -> Prepared:
        """The checked plan of this digest as the workflow asked for it (packed once)."""
        if not packed:
            return Prepared(plan=self._checked[sha256])
        if sha256 not in self._packed:
            self._packed[sha256] = plans.pack(self._checked[sha256])
        return Prepared(plan={}, plan_packed=self._packed[sha256])

    @activity.defn(name=ACT_RUN_EVENT)
    async def run_event(self, inp: RunEventInput) -> int:
        """Append one run-level (or operator-caused step) event; returns its runSeq."""
        who = RunIdentity.of(inp.context, inp.plan_ref)
        factory = EventFactory(who, emitted_by="engine")
        if inp.step_id is not None:
            event = factory.step_event(
                inp.event_type, inp.step_id, inp.payload,
                logical_attempt_id=inp.logical_attempt_id,
                caused_by_signal_id=inp.caused_by_signal_id,
            )
        else:
            event = factory.run_event(
                inp.event_type, inp.payload, discriminator=inp.discriminator,
                caused_by_signal_id=inp.caused_by_signal_id,
            )
        try:
            result = await RunWriter(self.store, who).append(event)
        except IllegalTransition:
            if inp.tolerate_illegal:
                return 0
            raise
        except DvtError as err:
            raise _app_error(err) from err
        return result.run_seq

    @activity.defn(name=ACT_RUN_STEP)
    async def run_step(self, inp: StepInput) -> StepOutcome:
        """Run one engine attempt through the shared runner, heartbeating while it works.

        engineAttemptId is the activity attempt. A failure the runner may still retry becomes a
        retryable ApplicationError carrying the runner's backoff, so Temporal waits exactly that.
        A cancellation request stops the handler through the runner's CancelToken; the activity
        then reports the runner's ``cancelled`` outcome.
        """
        info = activity.info()
        invocation = StepInvocation.model_validate(inp.invocation).with_engine_attempt(
            info.attempt
        )
        every = self._heartbeat_every_s
        if info.heartbeat_timeout:
            # Several beats per timeout, so one slow beat never times the attempt out.
            every = max(0.1, min(every, info.heartbeat_timeout.total_seconds() / 4))
        token = CancelToken()
        work = asyncio.ensure_future(self.runner.run(invocation, cancel=token))
        began = time.monotonic()
        try:
            while not work.done():
                # A cancellation arrives only with a heartbeat's answer: beat fast while a
                # step is young (short steps must still be stoppable), then settle down. A step
                # that ends within the first interval costs no heartbeat at all.
                fast = time.monotonic() - began < FAST_HEARTBEAT_WINDOW_S
                await asyncio.wait({work}, timeout=FAST_HEARTBEAT_S if fast else every)
                if not work.done():
                    activity.heartbeat()
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is not None and details.cancel_requested:
                # The run asked the step to stop: the runner records STEP_CANCELLED with the
                # run's reason, the same words as on every engine.
                token.cancel(await _cancel_reason(info, invocation.step_id))
                outcome = await asyncio.shield(work)
                return to_wire(outcome, with_output=inp.want_output)
            # Timed out, reset or shutting down: this attempt is lost to the engine, not
            # decided. Stop the handler without recording anything; Temporal runs the next
            # attempt (on this worker or another), which finds StepStarted already written.
            token.abandon()
            work.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(work)
            raise
        outcome = work.result()
        if outcome.status == "retry":
            err = outcome.error
            raise ApplicationError(
                err.message if err else "step failed",
                type=err.code if err else "STEP_FAILED",
                non_retryable=False,
                next_retry_delay=timedelta(milliseconds=max(1, outcome.retry_delay_ms or 0)),
                category=ApplicationErrorCategory.BENIGN,
            )
        return to_wire(outcome, with_output=inp.want_output)

    @activity.defn(name=ACT_GATE)
    async def gate(self, inp: GateInput) -> StepOutcome:
        """Resolve an open approval gate: approve, reject, expire or cancel it."""
        invocation = StepInvocation.model_validate(inp.invocation)
        try:
            if inp.action in ("approve", "reject"):
                outcome = await self.runner.complete_gate(
                    invocation, approve=inp.action == "approve",
                    approver=inp.approver or "operator", comment=inp.comment,
                    signal_id=inp.signal_id, output=inp.output,
                )
            elif inp.action == "expire":
                outcome = await self.runner.expire_gate(invocation)
            else:
                outcome = await self.runner.cancel_step(invocation, reason=inp.reason)
        except DvtError as err:
            raise _app_error(err) from err
        # A signal wait's output is the signal's data, which a later condition may read.
        return to_wire(outcome, with_output=inp.output is not None)
