"""Stand-ins until the shared plan loader and step runner land; replaced, not extended."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from temporalio.exceptions import ApplicationError

from dvt_adapters_temporal.wire import GateInput, StepInput, StepOutcome
from dvt_engine.errors import (
    PlanIntegrityValidationFailed,
    PlanNotFound,
    PlanSchemaVersionUnsupported,
    PlanUriNotAllowed,
)
from dvt_engine.eventlog import EventFactory, RunWriter
from dvt_engine.models.plan import SUPPORTED_SCHEMA_VERSIONS, ExecutionPlan, PlanRef
from dvt_engine.models.run import RunHeader
from dvt_engine.ports import RunStateStore


def interim_plan_loader(store: RunStateStore) -> Any:
    """Load plan:// references from the store's registry."""

    async def load(ref: PlanRef, header: RunHeader) -> ExecutionPlan:
        prefix = "plan://sha256/"
        if not ref.uri.startswith(prefix):
            raise PlanUriNotAllowed(f"{ref.uri} is not allowed")
        digest = ref.uri[len(prefix):]
        data = await store.get_plan(digest)
        if data is None:
            raise PlanNotFound(f"no plan {digest}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != ref.sha256:
            raise PlanIntegrityValidationFailed(
                "digest mismatch", details={"expected": ref.sha256, "actual": actual}
            )
        if ref.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
            raise PlanSchemaVersionUnsupported(ref.schema_version)
        return ExecutionPlan.model_validate_json(data)

    return load


class InterimStepRunner:
    """Writes step events and runs the built-in kinds."""

    def __init__(self, store: RunStateStore) -> None:
        self.store = store

    async def run_attempt(
        self, header: RunHeader, inp: StepInput, *, engine_attempt_id: int
    ) -> StepOutcome:
        spec = inp.step
        sid = spec["stepId"]
        la = inp.logical_attempt_id
        f = EventFactory(header, emitted_by="step-runner")
        w = RunWriter(self.store, header)
        await w.append(f.step_event("StepStarted", sid, {"kind": spec["kind"]},
                                    logical_attempt_id=la, engine_attempt_id=engine_attempt_id))
        params = spec.get("params") or {}
        kind = spec["kind"]
        retry = spec.get("retry") or {}
        max_attempts = int(retry.get("maxAttempts", 1))
        try:
            if kind == "sleep":
                await asyncio.sleep(float(params.get("ms", 0)) / 1000)
            if kind == "fail":
                fail_times = params.get("failTimes")
                if fail_times is None or engine_attempt_id <= int(fail_times):
                    code = str(params.get("code", "STEP_FAILED"))
                    retryable = bool(params.get("retryable", True))
                    if code in retry.get("nonRetryableErrorCodes", []):
                        retryable = False
                    if retryable and engine_attempt_id < max_attempts:
                        raise ApplicationError("injected failure", type=code)
                    await w.append(f.step_event(
                        "StepFailed", sid,
                        {"error": {"code": code, "message": "injected failure",
                                   "retryable": retryable}},
                        logical_attempt_id=la, engine_attempt_id=engine_attempt_id))
                    return StepOutcome("FAILED", code, "injected failure", retryable)
        except asyncio.CancelledError:
            await w.append(f.step_event(
                "StepFailed", sid,
                {"error": {"code": "STEP_CANCELLED", "message": "cancelled", "retryable": False}},
                logical_attempt_id=la, engine_attempt_id=engine_attempt_id))
            raise
        output = params if kind == "echo" else None
        await w.append(f.step_event("StepCompleted", sid, {"output": output},
                                    logical_attempt_id=la, engine_attempt_id=engine_attempt_id))
        return StepOutcome("SUCCESS")

    async def gate(self, header: RunHeader, inp: GateInput) -> None:
        sid = inp.step["stepId"]
        la = inp.logical_attempt_id
        f = EventFactory(header, emitted_by="step-runner")
        w = RunWriter(self.store, header)
        if inp.action == "open":
            await w.append(f.step_event("StepStarted", sid, {"kind": "approval"},
                                        logical_attempt_id=la))
            await w.append(f.step_event("StepAwaitingApproval", sid,
                                        {"timeoutMs": inp.step.get("timeoutMs")},
                                        logical_attempt_id=la))
        elif inp.action == "approve":
            await w.append(f.step_event(
                "StepCompleted", sid,
                {"output": {"approver": inp.approver, "comment": inp.comment}},
                logical_attempt_id=la, caused_by_signal_id=inp.signal_id))
        else:
            code = {"reject": "APPROVAL_REJECTED", "timeout": "APPROVAL_TIMEOUT"}.get(
                inp.action, "STEP_CANCELLED")
            await w.append(f.step_event(
                "StepFailed", sid,
                {"error": {"code": code, "message": code.lower(), "retryable": False}},
                logical_attempt_id=la, caused_by_signal_id=inp.signal_id))
