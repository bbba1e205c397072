"""Every event of the key's tenant as Server-Sent Events (reader)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Header, Query
from sse_starlette.sse import EventSourceResponse

from dvt_api.auth import Principal, role, services
from dvt_api.problems import ApiProblem, HttpCode
from dvt_api.services import Services
from dvt_api.tenant_stream import cursor_problem, tenant_stream
from dvt_engine.access import ApiRole

router = APIRouter(prefix="/v1", tags=["events"])
#: The shape of every cursor the stores write (dot-separated integers, see dvt_api.hub).
_CURSOR = re.compile(r"^\d{1,20}(\.\d{1,19})?$")


def _cursor(last_event_id: str | None, after: str | None, svc: Services) -> str | None:
    """Where to resume: Last-Event-ID wins over ?after=; None starts at the current end.

    Checked against the store before the stream starts: once it has, an error can only end it.
    """
    for where, value in (("header/Last-Event-ID", last_event_id), ("query/after", after)):
        if value is not None:
            text = value.strip()
            problem = ("not a tenant cursor" if not _CURSOR.match(text)
                       else cursor_problem(svc.store, text))
            if problem is not None:
                raise ApiProblem(422, HttpCode.REQUEST_INVALID,
                                 "the cursor must be an id this stream sent",
                                 errors=[{"path": where, "message": problem}])
            return text
    return None


@router.get("/stream", summary="Every event of the tenant as Server-Sent Events",
            response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream(after: str | None = Query(default=None, max_length=45),
                 last_event_id: str | None = Header(default=None, alias="Last-Event-ID",
                                                    max_length=100),
                 who: Principal = role(ApiRole.READER),
                 svc: Services = Depends(services)) -> EventSourceResponse:
    """Events after the cursor (or from now on), then live ones; the id is a tenant cursor."""
    start = _cursor(last_event_id, after, svc)
    s = svc.settings
    return EventSourceResponse(
        tenant_stream(svc.hub, svc.store, who.tenant_id, start, retry_ms=s.sse_retry_ms,
                      metrics=svc.metrics),
        ping=s.sse_heartbeat_s, send_timeout=s.sse_send_timeout_s,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
