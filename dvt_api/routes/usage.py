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
    # Read as text so a bad value is USAGE_QUERY_INVALID like every other refusal of this
    # route; the document still says what is expected.
    start: str | None = Query(default=None, alias="from", max_length=10,
                              description="First UTC day, YYYY-MM-DD (default: this month)",
                              json_schema_extra={"format": "date"}),
    end: str | None = Query(default=None, alias="to", max_length=10,
                            description="Day after the last, YYYY-MM-DD (default: tomorrow)",
                            json_schema_extra={"format": "date"}),
    group_by: str | None = Query(default=None, alias="groupBy",
                                 description="plan (default), run or day",
                                 json_schema_extra={"enum": ["plan", "run", "day"]}),
    who: Principal = role(ApiRole.READER), svc: Services = Depends(services),
) -> JSONResponse:
    """``{from, to, totalUnits, items: [{key, runs, computeUnits, dataUnits, totalUnits}]}``,
    folded from the tenant's events (USAGE_QUERY_INVALID for bad dates or groupBy)."""
    window = UsageWindow.parse(start, end, group_by)
    rows = await usage_rows(svc.store, who.tenant_id, svc.settings.prices, before=window.end)
    answer = summarize(rows, window)
    svc.metrics.usage_query(window.group_by, len(rows))
    return JSONResponse(answer)
