"""Usage (reader): what the caller's tenant used in a window of days, metered from the log."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from starlette.responses import JSONResponse

from dvt_api.auth import Principal, role, services
from dvt_api.services import Services
from dvt_engine.access import ApiRole
from dvt_engine.cost import UsageWindow, summarize, usage_rows

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get("", summary="The tenant's usage in a window of days")
async def get_usage(
    start: str | None = Query(default=None, alias="from",
                              description="First UTC day, YYYY-MM-DD (default: this month)"),
    end: str | None = Query(default=None, alias="to",
                            description="Day after the last, YYYY-MM-DD (default: tomorrow)"),
    group_by: str | None = Query(default=None, alias="groupBy",
                                 description="plan (default), run or day"),
    who: Principal = role(ApiRole.READER), svc: Services = Depends(services),
) -> JSONResponse:
    """``{from, to, totalUnits, items: [{key, runs, computeUnits, dataUnits, totalUnits}]}``,
    folded from the tenant's events (USAGE_QUERY_INVALID for bad dates or groupBy)."""
    window = UsageWindow.parse(start, end, group_by)
    rows = await usage_rows(svc.store, who.tenant_id, svc.settings.prices, before=window.end)
    answer = summarize(rows, window)
    svc.metrics.usage_query(window.group_by, len(rows))
    return JSONResponse(answer)
