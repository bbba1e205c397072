"""The interpreter workflow's activities: plan loading, steps, run-level events and gates.

Every event goes through the shared event factory and run writer, so the log is the same as on
every other engine; idempotency keys make a retried activity harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dvt_adapters_temporal.wire import (
    ACT_GATE,
    ACT_PREPARE,
    ACT_RUN_EVENT,
    ACT_RUN_STEP,
    GateInput,
    Prepared,
    PrepareInput,
    RunEventInput,
    StepInput,
    StepOutcome,
)
from dvt_engine.errors import DvtError, IllegalTransition, RunNotFound
from dvt_engine.eventlog import EventFactory, RunWriter
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.run import RunHeader
from dvt_engine.ports import RunStateStore

ENGINE_NAME = "temporal"

PlanLoader = Callable[[PlanRef, RunHeader], Awaitable[ExecutionPlan]]


def _app_error(err: DvtError, *, non_retryable: bool | None = None) -> ApplicationError:
    return ApplicationError(
        err.message,
        err.to_dict(),
        type=str(err.code),
        non_retryable=(not err.retryable) if non_retryable is None else non_retryable,
    )


class TemporalActivities:
    """Activity implementations bound to a store and the host's step runner."""

    def __init__(
        self,
        store: RunStateStore,
        *,
        load_plan: PlanLoader,
        step_runner: Any,
        heartbeat_every_s: float = 2.0,
    ) -> None:
        self.store = store
        self._load_plan = load_plan
        self._runner = step_runner
        self._heartbeat_every_s = heartbeat_every_s
        self._headers: dict[tuple[str, str], RunHeader] = {}

    def all(self) -> list[Callable[..., Any]]:
        """Every activity, for Worker(activities=...)."""
        return [self.prepare, self.run_step, self.run_event, self.gate]

    async def _header(self, context: dict[str, Any]) -> RunHeader:
        key = (str(context["tenantId"]), str(context["runId"]))
        header = self._headers.get(key)
        if header is None:
            header = await self.store.get_run(*key)
            if header is None:
                raise _app_error(
                    RunNotFound(f"run {key[1]!r} is not registered", details={"runId": key[1]})
                )
            if len(self._headers) > 10_000:
                self._headers.clear()
            self._headers[key] = header
        return header

    @activity.defn(name=ACT_PREPARE)
    async def prepare(self, inp: PrepareInput) -> Prepared:
        """Fetch and validate the plan; write RunStarted (first generation) or reload state."""
        header = await self._header(inp.context)
        writer = RunWriter(self.store, header)
        factory = EventFactory(header, emitted_by="engine")
        plan_ref = PlanRef.model_validate(inp.plan_ref)
        try:
            plan = await self._load_plan(plan_ref, header)
        except DvtError as err:
            if err.retryable:
                raise _app_error(err) from err
            snap = await self.store.get_snapshot(header.tenant_id, header.run_id)
            if snap is not None and not snap.status.is_terminal:
                await writer.append(factory.run_event(
                    "RunFailed", {"stepId": None, "code": str(err.code), "message": err.message}
                ))
            return Prepared(plan={}, refused_code=str(err.code), refused_message=err.message)
        if inp.first_generation:
            await writer.append(factory.run_event(
                "RunStarted", {"engine": ENGINE_NAME, "engineRunRef": inp.engine_run_ref}
            ))
        return Prepared(plan=plan.model_dump(mode="json", by_alias=True, exclude_none=True))

    @activity.defn(name=ACT_RUN_EVENT)
    async def run_event(self, inp: RunEventInput) -> int:
        """Append one run-level (or operator-caused step) event; returns its runSeq."""
        header = await self._header(inp.context)
        factory = EventFactory(header, emitted_by="engine")
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
            result = await RunWriter(self.store, header).append(event)
        except IllegalTransition:
            if inp.tolerate_illegal:
                return 0
            raise
        except DvtError as err:
            raise _app_error(err) from err
        return result.run_seq

    @activity.defn(name=ACT_GATE)
    async def gate(self, inp: GateInput) -> None:
        """Open an approval gate or record its resolution."""
        header = await self._header(inp.context)
        try:
            await self._runner.gate(header, inp)
        except DvtError as err:
            raise _app_error(err) from err

    @activity.defn(name=ACT_RUN_STEP)
    async def run_step(self, inp: StepInput) -> StepOutcome:
        """Run one engine attempt of a step through the shared step runner, heartbeating."""
        header = await self._header(inp.context)
        info = activity.info()
        work = asyncio.ensure_future(
            self._runner.run_attempt(header, inp, engine_attempt_id=info.attempt)
        )
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=self._heartbeat_every_s)
                if done:
                    break
                activity.heartbeat()
        except asyncio.CancelledError:
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
            raise
        outcome: StepOutcome = work.result()
        return outcome
