"""A run's event stream: every stored event after the cursor, then live ones, until the end.

Fed by the store's ``follow`` (which waits on the store's notifications), pulled one event at
a time as the client takes them: nothing is buffered per client beyond the event being sent,
and a client that cannot take an event within ``sse_send_timeout_s`` is dropped (it resumes
with Last-Event-ID).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from sse_starlette.event import ServerSentEvent

from dvt_api.metrics import ApiMetrics
from dvt_api.views import event_document
from dvt_engine.models.events import TERMINAL_RUN_EVENTS, Event
from dvt_engine.ports import RunStateStore

PAGE = 500


def message(event: Event, ident: str | None = None) -> ServerSentEvent:
    """One event as an SSE message; its id is ``ident`` (default: the event's runSeq)."""
    return ServerSentEvent(data=json.dumps(event_document(event), ensure_ascii=False,
                                           separators=(",", ":")),
                           event=str(event.event_type),
                           id=ident if ident is not None else str(event.run_seq))


async def run_stream(store: RunStateStore, tenant_id: str, run_id: str, after: int, *,
                     retry_ms: int, metrics: ApiMetrics) -> AsyncIterator[ServerSentEvent]:
    """The SSE messages of one run after runSeq ``after``; ends after the terminal event."""
    metrics.sse_clients.inc()
    try:
        yield ServerSentEvent(comment="stream of run events", retry=retry_ms)
        last = after
        while True:
            page = await store.fetch_events(tenant_id, run_id, after_seq=last, limit=PAGE)
            for event in page:
                yield message(event)
                last = event.run_seq or last
                if event.event_type in TERMINAL_RUN_EVENTS:
                    return
            if len(page) < PAGE:
                break
        snapshot = await store.get_snapshot(tenant_id, run_id)
        if snapshot is not None and snapshot.status.is_terminal and \
                snapshot.last_event_seq <= last:
            return
        async for event in store.follow(tenant_id, run_id, after_seq=last):
            yield message(event)
            if event.event_type in TERMINAL_RUN_EVENTS:
                return
    finally:
        metrics.sse_clients.dec()
