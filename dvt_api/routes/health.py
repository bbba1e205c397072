"""Liveness and readiness: no authentication, no tenant data."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse

from dvt_api.auth import services
from dvt_api.services import Services

router = APIRouter(tags=["health"])
_PROBE_SHA = "0" * 64


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    """200 while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", summary="The store and the engine answer",
            responses={503: {"description": "store or engine not ready"}})
async def readyz(svc: Services = Depends(services)) -> JSONResponse:
    """200 when a store query succeeds and the engine answers its probe; 503 otherwise."""
    checks = {"store": "ok", "engine": "ok"}
    body: dict[str, object] = {}
    try:
        await svc.store.get_plan(_PROBE_SHA)
    except Exception:
        checks["store"] = "unavailable"
    if svc.engine_probe is not None:  # the probe /metrics uses: one cached answer for both
        health = await svc.engine_probe.check()
        body["engine"] = health.engine
        if not health.up:
            checks["engine"] = "unavailable"
            body["engineReason"] = health.reason
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks, **body},
                        status_code=200 if ok else 503)
