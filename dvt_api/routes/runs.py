"""Runs: create (runner, idempotent), list and read (reader)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Path, Query
from starlette.responses import JSONResponse, Response

from dvt_api import idempotency
from dvt_api.auth import Principal, role, services
from dvt_api.planning import accept_plan, refused, report_for, unknown_plan
from dvt_api.problems import ApiProblem, HttpCode
from dvt_api.routes import limits
from dvt_api.schemas import CreateRun, RunList
from dvt_api.services import Services
from dvt_api.views import decode_cursor, encode_cursor, run_document
from dvt_engine.access import ApiRole, StoredResponse
from dvt_engine.errors import UsageError
from dvt_engine.labels import parse_label_pairs
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunContext, RunStatus
from dvt_engine.planning.uri_policy import registry_uri

router = APIRouter(prefix="/v1/runs", tags=["runs"])
RUN_ID = Path(alias="runId", max_length=1000)


async def _plan_ref(svc: Services, tenant_id: str, body: CreateRun) -> PlanRef:
    if (body.plan is None) == (body.plan_ref is None):
        raise ApiProblem(422, HttpCode.REQUEST_INVALID, "send exactly one of plan and planRef",
                         errors=[{"path": "body", "message": "plan xor planRef"}])
    if body.plan is not None:
        ref, _ = await accept_plan(svc, tenant_id, body.plan)
        return ref
    assert body.plan_ref is not None
    digest = body.plan_ref.sha256
    data = await svc.store.get_plan(digest) if await svc.plans.has_plan(tenant_id, digest) \
        else None
    if data is None:
        raise unknown_plan()
    report = report_for(svc, data)
    if not report.ok:
        raise refused(report)
    return PlanRef(uri=registry_uri(digest), sha256=digest,
                   schema_version=report.schema_version or "v1.0",
                   plan_id=report.plan_id or "", plan_version=report.plan_version or "",
                   size_bytes=len(data))


async def _start(svc: Services, who: Principal, body: CreateRun,
                 request_key: str | None) -> StoredResponse:
    """Start the run (or find the one this request started before) and answer with it."""
    if body.engine is not None and body.engine != svc.settings.engine_name:
        raise ApiProblem(422, "ENGINE_NOT_FOUND",
                         f"this service runs plans on {svc.settings.engine_name!r}",
                         errors=[{"path": "body/engine", "message": "engine not served"}])
    plan_ref = await _plan_ref(svc, who.tenant_id, body)
    run_id = body.run_id or str(uuid.uuid4())
    existing = await svc.store.get_run(who.tenant_id, run_id) if body.run_id else None
    if existing is not None:
        # Labels are part of what was asked for: the same runId with other labels is a
        # different request, refused like other plan or inputs.
        same = (existing.plan_ref.sha256, dict(existing.params), dict(existing.labels)) == \
            (plan_ref.sha256, dict(body.inputs), dict(body.labels))
        if not same:
            raise ApiProblem(422, HttpCode.IDEMPOTENCY_KEY_MISMATCH,
                             "this runId names a run of another request")
    context = RunContext(tenant_id=who.tenant_id, project_id=svc.settings.project,
                         environment_id=svc.settings.environment, run_id=run_id,
                         run_request_id=request_key, triggered_by=who.key_id,
                         params=dict(body.inputs), labels=dict(body.labels))
    if existing is None:
        queued = await limits.admit(svc, plan_ref, context)
        if queued is not None:
            return queued
    try:
        async with limits.released_on_failure(svc, who.tenant_id, run_id):
            await svc.engine.start_run(plan_ref, context)
    except UsageError as exc:
        # A runId reused by another request: the same answer as a foreign runId would get.
        raise ApiProblem(409, HttpCode.IDEMPOTENCY_KEY_MISMATCH,
                         "this runId is already used by another request") from exc
    doc = await run_document(svc.store, who.tenant_id, run_id)
    # Percent-encoded: a run id may hold any Unicode, a header only latin-1 (and a URI less).
    headers: tuple[tuple[str, str], ...] = (("Location", f"/v1/runs/{quote(run_id, safe='')}"),)
    if existing is not None:
        headers += ((idempotency.REPLAYED, "true"),)
    return StoredResponse(200 if existing is not None else 201,
                          json.dumps(doc, ensure_ascii=False).encode(), headers)


@router.post("", status_code=201, summary="Start a run",
             responses={200: {"description": "a replay of an earlier identical request"}})
async def create_run(
    body: CreateRun,
    key: str | None = Header(default=None, alias="Idempotency-Key", max_length=255),
    who: Principal = role(ApiRole.RUNNER),
    svc: Services = Depends(services),
) -> Response:
    """Start a run of a stored plan or of a plan document; idempotent with Idempotency-Key."""
    if key is None:
        answer = await _start(svc, who, body, None)
        return Response(answer.body, status_code=answer.status, headers=dict(answer.headers),
                        media_type="application/json")
    idempotency.check_key(key)
    fingerprint = idempotency.request_hash(body.model_dump(mode="json", by_alias=True,
                                                           exclude_unset=True))
    # The run-request id makes the store itself refuse a second run for this key as well.
    request_key = "idem-" + idempotency.request_hash(key)[:40]
    return await idempotency.once(svc, who.tenant_id, key, fingerprint,
                                  lambda: _start(svc, who, body, request_key))


_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")
LABEL_FILTER_DOC = ("`key:value`, repeated: every pair must match (split at the first `:`;"
                    " keys never hold one)")


def _instant(name: str, text: str | None) -> datetime | None:
    """An RFC 3339 timestamp with its offset, or REQUEST_INVALID naming the parameter."""
    if text is None:
        return None
    match = _RFC3339.match(text)
    try:
        if match is None:
            raise ValueError(text)
        date, clock, fraction, offset = match.groups()
        offset = "+00:00" if offset in ("Z", "z") else offset
        # Datetimes keep microseconds: finer digits are cut (not rounded), the same in each store.
        micros = f".{(fraction or '0')[:6]:0<6}"
        return datetime.fromisoformat(f"{date}T{clock}{micros}{offset}")
    except ValueError as exc:
        raise ApiProblem(422, HttpCode.REQUEST_INVALID,
                         f"{name} must be an RFC 3339 timestamp with an offset,"
                         " e.g. 2026-12-01T00:00:00Z",
                         errors=[{"path": f"query/{name}", "message": "not RFC 3339"}]) from exc


def _filters_key(status: list[RunStatus], plan_id: str | None, labels: dict[str, str],
                 after: datetime | None, before: datetime | None) -> str:
    """What a cursor remembers of its query: a digest of the filters, not the filters."""
    return idempotency.request_hash({
        "status": sorted(set(status)), "planId": plan_id, "labels": labels,
        # The same instant written with another offset is the same filter.
        "createdAfter": after.astimezone(UTC).isoformat() if after else None,
        "createdBefore": before.astimezone(UTC).isoformat() if before else None,
    })[:16]


@router.get("", response_model=RunList, summary="List runs, newest first")
async def list_runs(
    status: list[RunStatus] | None = Query(default=None),
    plan_id: str | None = Query(default=None, alias="planId", min_length=1, max_length=200),
    label: list[str] | None = Query(default=None, description=LABEL_FILTER_DOC),
    created_after: str | None = Query(
        default=None, alias="createdAfter", max_length=64,
        description="runs created at or after this RFC 3339 instant",
        json_schema_extra={"format": "date-time"}),
    created_before: str | None = Query(
        default=None, alias="createdBefore", max_length=64,
        description="runs created before this RFC 3339 instant",
        json_schema_extra={"format": "date-time"}),
    limit: int = Query(default=50, ge=1, le=200),
    cursor: str | None = Query(default=None, max_length=2048),
    who: Principal = role(ApiRole.READER),
    svc: Services = Depends(services),
) -> RunList:
    """The tenant's runs, newest first; follow `nextCursor` (with the same filters)."""
    labels = parse_label_pairs(label or (), path="query/label")
    after = _instant("createdAfter", created_after)
    until = _instant("createdBefore", created_before)
    filters = _filters_key(status or [], plan_id, labels, after, until)
    before = decode_cursor(cursor, filters) if cursor else None
    rows = await svc.store.list_runs(who.tenant_id, status=status or None, plan_id=plan_id,
                                     labels=labels or None, created_after=after,
                                     created_before=until, limit=limit + 1, before=before)
    page = rows[:limit]
    items: list[dict[str, Any]] = [r.model_dump(mode="json", by_alias=True) for r in page]
    more = len(rows) > limit and page
    return RunList(items=items,
                   next_cursor=encode_cursor(page[-1].created_at, page[-1].run_id, filters)
                   if more else None)


@router.get("/{runId}", summary="A run's snapshot")
async def get_run(run_id: str = RUN_ID, who: Principal = role(ApiRole.READER),
                  svc: Services = Depends(services)) -> JSONResponse:
    """The run's snapshot with engine, checksum, createdAt and updatedAt (a QUEUED run: its
    identity, status and when it was queued)."""
    try:
        return JSONResponse(await run_document(svc.store, who.tenant_id, run_id))
    except ApiProblem:
        waiting = await limits.queued(svc, who.tenant_id, run_id)
        if waiting is None:
            raise
        return JSONResponse(limits.queued_document(waiting))
