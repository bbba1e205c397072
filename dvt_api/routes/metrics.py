"""Prometheus exposition (bind the service where only scrapers reach /metrics)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from dvt_api.auth import services
from dvt_api.services import Services

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(svc: Services = Depends(services)) -> Response:
    """The service's metrics in the Prometheus text format."""
    if svc.gauges is not None:
        await svc.gauges.refresh()
    if svc.engine_probe is not None:
        await svc.engine_probe.check()
    if svc.admission is not None and svc.settings.limits.enabled:
        svc.metrics.queue_depths(await svc.admission.queue_depths())
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)
