"""Tenant limits (admin): read and change the caller's tenant's limits; admission of run starts
and signals for the other routes, and the answer for a QUEUED run."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends
from starlette.responses import JSONResponse

from dvt_api.auth import Principal, role, services
from dvt_api.budget_alerts import announce_crossings
from dvt_api.metrics import ApiMetrics
from dvt_api.problems import ApiProblem, HttpCode
from dvt_api.services import Services
from dvt_engine.access import ApiRole, StoredResponse
from dvt_engine.admission import (
    AdmissionStore,
    LimitsPatch,
    QueuedRun,
    StartRequest,
    TenantLimits,
    plan_size,
)
from dvt_engine.cost import check_budget
from dvt_engine.errors import IdentifierInvalid, QuotaExceeded, RateLimited
from dvt_engine.identifiers import validate_identifier
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunContext

router = APIRouter(prefix="/v1/limits", tags=["limits"])
ADMIN = role(ApiRole.ADMIN)

#: The metric kind of each refusal kind the core names (dvt_limit_rejections_total).
METRIC_KINDS = {"activeRuns": "active_runs", "runStartsPerMinute": "run_starts",
                "signalsPerMinute": "signals", "planSteps": "plan_steps",
                "planBytes": "plan_bytes", "queuedRuns": "queue_full", "budget": "budget"}


def _admission(svc: Services) -> AdmissionStore:
    if svc.admission is None:
        raise ApiProblem(404, HttpCode.NOT_FOUND, "this service keeps no tenant limits")
    found: AdmissionStore = svc.admission
    return found


@router.get("", summary="The tenant's limits", response_model=TenantLimits,
            response_model_by_alias=True)
async def get_limits(who: Principal = ADMIN, svc: Services = Depends(services)) -> JSONResponse:
    """The effective limits of the caller's tenant (defaults with its overrides)."""
    limits = await _admission(svc).limits(who.tenant_id)
    return JSONResponse(limits.document())


#: The documented body: the patch's own schema, so a client (and a conformance check) knows that
#: unknown fields are refused rather than ignored.
def _patch_schema() -> dict[str, Any]:
    schema = LimitsPatch.model_json_schema(by_alias=True,
                                           ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # each is a component already (TenantLimits uses them too)
    return schema


LIMITS_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _patch_schema()}}}}


@router.put("", summary="Change the tenant's limits", response_model=TenantLimits,
            response_model_by_alias=True, openapi_extra=LIMITS_BODY)
async def put_limits(body: dict[str, Any] = Body(
        openapi_examples={"queue": {"value": {"maxActiveRuns": 10, "overflow": "queue"}}}),
        who: Principal = ADMIN, svc: Services = Depends(services)) -> JSONResponse:
    """A partial object: given fields replace, ``null`` restores the default; unknown fields,
    and counts that are not whole numbers from 1 up, are refused (LIMITS_INVALID)."""
    patch = LimitsPatch.parse(body)
    limits = await _admission(svc).set_limits(who.tenant_id, patch)
    return JSONResponse(limits.document())


@contextlib.contextmanager
def counted(metrics: ApiMetrics, tenant_id: str) -> Any:
    """Count a limit refusal raised inside the block in dvt_limit_rejections_total."""
    try:
        yield
    except (RateLimited, QuotaExceeded) as exc:
        kind = METRIC_KINDS.get(str(exc.details.get("kind")))
        if kind is not None:
            metrics.limit_rejected(tenant_id, kind)
        raise


async def admit(svc: Services, plan_ref: PlanRef, context: RunContext) -> StoredResponse | None:
    """Admit a start when the service enforces limits: None to go ahead, or the 202 answer of
    a QUEUED run. A refusal raises RATE_LIMITED or QUOTA_EXCEEDED (and is counted)."""
    if svc.admission is None or not svc.settings.limits.enabled:
        return None
    with counted(svc.metrics, context.tenant_id):
        svc.admission.refuse_early(context.tenant_id)  # a flood over the rate costs nothing
        steps, size = await plan_size(svc.store, plan_ref)
        budget = await check_budget(svc.admission, svc.store, context.tenant_id,
                                    svc.settings.prices)
        await announce_crossings(svc, budget.new_crossings)
        budget.refuse_if_spent()
        verdict = await svc.admission.admit(StartRequest(plan_ref, context, steps, size))
    if not verdict.queued:
        return None
    run_id = verdict.run_id or context.run_id
    queued = await svc.admission.queued_run(context.tenant_id, run_id)
    if svc.admission_dispatcher is not None:
        svc.admission_dispatcher.wake()
    doc = queued_document(queued) if queued is not None else {"runId": run_id,
                                                               "status": "QUEUED"}
    return StoredResponse(202, json.dumps(doc, ensure_ascii=False).encode(),
                          (("Location", f"/v1/runs/{quote(run_id, safe='')}"),))


@contextlib.asynccontextmanager
async def released_on_failure(svc: Services, tenant_id: str, run_id: str) -> AsyncIterator[None]:
    """Free the slot admission reserved when the start itself fails."""
    try:
        yield
    except BaseException:
        if svc.admission is not None and svc.settings.limits.enabled:
            await svc.admission.release(tenant_id, run_id)
        raise


async def take_signal(svc: Services, tenant_id: str) -> None:
    """Count a signal against signalsPerMinute when the service enforces limits."""
    if svc.admission is not None and svc.settings.limits.enabled:
        with counted(svc.metrics, tenant_id):
            await svc.admission.take_signal(tenant_id)


async def queued(svc: Services, tenant_id: str, run_id: str) -> QueuedRun | None:
    """The tenant's queue row of a run (waiting, cancelled or failed to start), or None."""
    if svc.admission is None:
        return None
    try:
        validate_identifier("runId", run_id)
    except IdentifierInvalid:
        return None  # never queued: admission takes only valid ids (and NUL upsets SQL)
    return await svc.admission.queued_run(tenant_id, run_id)


def queued_document(run: QueuedRun) -> dict[str, Any]:
    """A run still in its tenant's queue, as GET /v1/runs/{runId} shows it."""
    status = {"QUEUED": "QUEUED", "STARTING": "QUEUED", "CANCELLED": "CANCELLED"}.get(
        run.state, "FAILED")
    doc: dict[str, Any] = {
        "runId": run.run_id, "tenantId": run.tenant_id, "projectId": run.context.project_id,
        "environmentId": run.context.environment_id, "planId": run.plan_ref.plan_id,
        "planVersion": run.plan_ref.plan_version, "status": status,
        "labels": dict(run.context.labels), "createdAt": run.enqueued_at.isoformat(),
        "updatedAt": run.enqueued_at.isoformat(), "steps": [], "lastEventSeq": 0,
    }
    if run.error is not None:
        doc["failure"] = {"code": run.error.get("code"), "message": run.error.get("message")}
    return doc
