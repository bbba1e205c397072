"""The tenant stream: every event of the tenant after a cursor, as Server-Sent Events.

Live events come from the process's hub (one follower per tenant). A client that resumes from
a cursor first catches up on a follower of its own, and switches to its hub queue once it has
sent the oldest event queued there: from then on the queue holds every later event, so the
switch neither loses nor repeats one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

from sse_starlette.event import ServerSentEvent

from dvt_api.hub import HubClient, TenantHub, cursor_key
from dvt_api.metrics import ApiMetrics
from dvt_api.sse import message
from dvt_engine.errors import UsageError
from dvt_engine.ports import TENANT_LOG_START, RunStateStore, TenantCursor, TenantEvent
from dvt_engine.stores.memory import MemoryRunStateStore


def _caught_up(client: HubClient, last: TenantCursor) -> bool:
    first = client.first_cursor()
    return first is not None and cursor_key(first) <= cursor_key(last)


def cursor_problem(store: RunStateStore, cursor: TenantCursor) -> str | None:
    """Why ``store`` cannot resume from ``cursor``, a well-formed one (None: it can).

    Both stores write dot-separated integers but in different shapes (memory: a position,
    PostgreSQL: transaction.position); one of the other kind would fail mid-stream.
    """
    if cursor == TENANT_LOG_START:
        return None
    # The service wraps its store to time appends (MeasuredStore); the cursor is the inner one's.
    store = getattr(store, "inner", store)
    if isinstance(store, MemoryRunStateStore):
        if cursor.isascii() and cursor.isdigit():
            return None
        return "a cursor of another store: this service keeps its events in memory"
    if type(store).__module__.startswith("dvt_statestore_pg."):
        from dvt_statestore_pg.follow import parse_cursor

        try:
            parse_cursor(cursor)
        except UsageError:
            return "a cursor of another store: this service keeps its events in PostgreSQL"
    return None


async def tenant_stream(hub: TenantHub, store: RunStateStore, tenant_id: str,
                        after: TenantCursor | None, *, retry_ms: int,
                        metrics: ApiMetrics) -> AsyncIterator[ServerSentEvent]:
    """The SSE messages of ``tenant_id``'s events after ``after`` (None: from now on)."""
    metrics.sse_clients.inc()
    try:
        yield ServerSentEvent(comment="stream of tenant events", retry=retry_ms)
        with hub.subscribe(tenant_id) as client:
            last = after
            if last is not None:
                own = cast(AsyncGenerator[TenantEvent, None],
                           store.follow_tenant(tenant_id, after=last))
                async with contextlib.aclosing(own):
                    while not _caught_up(client, last):
                        if client.dropped:
                            return
                        item = await anext(own)
                        yield _sse(item)
                        last = item.cursor
            while True:
                await client.wait()
                if client.dropped:
                    return
                queued = client.take()
                assert queued is not None
                if last is None or cursor_key(queued.cursor) > cursor_key(last):
                    yield _sse(queued)
                    last = queued.cursor
    finally:
        metrics.sse_clients.dec()


def _sse(item: TenantEvent) -> ServerSentEvent:
    return message(item.event, item.cursor)
