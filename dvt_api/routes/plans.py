"""Plans: store (runner), validate (reader), read back (reader)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import JSONResponse, Response

from dvt_api.auth import Principal, role, services
from dvt_api.planning import PLAN_BODY, accept_plan, ref_body, report_for, unknown_plan
from dvt_api.services import Services
from dvt_engine.access import ApiRole

router = APIRouter(prefix="/v1/plans", tags=["plans"])


@router.post("", status_code=201, summary="Store a plan", openapi_extra=PLAN_BODY,
             responses={200: {"description": "the same plan was already stored"}})
async def store(request: Request, who: Principal = role(ApiRole.RUNNER),
                svc: Services = Depends(services)) -> JSONResponse:
    """Validate a plan for the served engine and store its bytes; 201, or 200 when known."""
    ref, new = await accept_plan(svc, who.tenant_id, await request.body())
    return JSONResponse({"planRef": ref_body(ref)}, status_code=201 if new else 200)


@router.post("/validate", summary="Validate a plan without storing it", openapi_extra=PLAN_BODY)
async def validate(request: Request,
                   engine: str | None = Query(default=None, max_length=50),
                   who: Principal = role(ApiRole.READER),
                   svc: Services = Depends(services)) -> JSONResponse:
    """The validation report (ok or not) for ``engine`` (default: the served engine)."""
    report = report_for(svc, await request.body(), engine)
    return JSONResponse(report.model_dump(mode="json", by_alias=True))


@router.get("/{sha256}", summary="The stored plan's bytes",
            response_class=Response, responses={200: {"content": {"application/json": {}}}})
async def get_plan(sha256: str = Path(max_length=200), who: Principal = role(ApiRole.READER),
                   svc: Services = Depends(services)) -> Response:
    """The exact bytes stored under the digest, for a tenant that stored them."""
    digest = sha256.lower()
    if len(digest) != 64 or not await svc.plans.has_plan(who.tenant_id, digest):
        raise unknown_plan()
    data = await svc.store.get_plan(digest)
    if data is None:
        raise unknown_plan()
    return Response(data, media_type="application/json")
