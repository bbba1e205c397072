"""A run's events: a page of the stored log, or a live SSE stream (reader)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Query
from sse_starlette.sse import EventSourceResponse

from dvt_api.auth import Principal, role, services
from dvt_api.problems import ApiProblem, HttpCode, run_not_found
from dvt_api.routes.runs import RUN_ID
from dvt_api.schemas import EventPage
from dvt_api.services import Services
from dvt_api.sse import run_stream
from dvt_api.views import event_document
from dvt_engine.access import ApiRole

router = APIRouter(prefix="/v1/runs", tags=["events"])


async def _require_run(svc: Services, tenant_id: str, run_id: str) -> None:
    if await svc.store.get_run(tenant_id, run_id) is None:
        raise run_not_found()


@router.get("/{runId}/events", response_model=EventPage, summary="A page of a run's events")
async def events(run_id: str = RUN_ID, after: int = Query(default=0, ge=0, le=2**62),
                 limit: int = Query(default=100, ge=1, le=1000),
                 who: Principal = role(ApiRole.READER),
                 svc: Services = Depends(services)) -> EventPage:
    """Stored envelopes with runSeq > ``after``, ascending."""
    await _require_run(svc, who.tenant_id, run_id)
    page = await svc.store.fetch_events(who.tenant_id, run_id, after_seq=after, limit=limit)
    next_after = page[-1].run_seq or after if page else after
    return EventPage(items=[event_document(e) for e in page], next_after=next_after)


def _cursor(last_event_id: str | None, after: int | None) -> int:
    """Where to resume: Last-Event-ID wins over ?after=; both are a runSeq."""
    if last_event_id is not None:
        text = last_event_id.strip()
        if not text.isdigit() or len(text) > 18:
            raise ApiProblem(422, HttpCode.REQUEST_INVALID,
                             "Last-Event-ID must be a runSeq this stream sent",
                             errors=[{"path": "header/Last-Event-ID", "message": "not a runSeq"}])
        return int(text)
    return after or 0


@router.get("/{runId}/stream", summary="A run's events as Server-Sent Events",
            response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream(run_id: str = RUN_ID,
                 after: int | None = Query(default=None, ge=0, le=2**62),
                 last_event_id: str | None = Header(default=None, alias="Last-Event-ID",
                                                    max_length=100),
                 who: Principal = role(ApiRole.READER),
                 svc: Services = Depends(services)) -> EventSourceResponse:
    """Every stored event after the cursor, then live ones; ends after the terminal event."""
    await _require_run(svc, who.tenant_id, run_id)
    start = _cursor(last_event_id, after)
    s = svc.settings
    return EventSourceResponse(
        run_stream(svc.store, who.tenant_id, run_id, start, retry_ms=s.sse_retry_ms,
                   metrics=svc.metrics),
        ping=s.sse_heartbeat_s, send_timeout=s.sse_send_timeout_s,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
