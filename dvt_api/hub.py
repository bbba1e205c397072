"""One follower per tenant per process, fanned out to that tenant's stream clients.

The hub reads a tenant's events once (the store's ``follow_tenant``) and hands each to every
client of the tenant through a queue of its own. A queue is bounded: a client that falls
``client_queue`` events behind is dropped (its queue is freed and its stream ends; it resumes
by cursor), so a slow client never makes the server buffer without bound and never holds
back the others. The follower starts with the tenant's first client and stops with its last,
so a process with no stream client reads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import Gauge

from dvt_api.metrics import ApiMetrics
from dvt_engine.eventlog import utc_now
from dvt_engine.ports import RunStateStore, TenantCursor, TenantEvent
from dvt_engine.waiting import cancel_and_wait

log = logging.getLogger("dvt_api")


def cursor_key(cursor: TenantCursor) -> tuple[int, ...]:
    """A tenant cursor as a sortable key, in stream order.

    Both stores write cursors as dot-separated integers compared left to right (PostgreSQL
    ``<commit_xid>.<position>``, memory ``<index>``; ``TENANT_LOG_START`` is ``"0"``).
    """
    return tuple(int(part) for part in cursor.split("."))


@dataclass(eq=False)
class HubClient:
    """One stream client's view of the hub: its queue, and whether it was dropped."""

    limit: int
    queued: Gauge
    items: deque[TenantEvent] = field(default_factory=deque)
    dropped: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self) -> TenantEvent | None:
        """The oldest queued event, or None."""
        if not self.items:
            return None
        self.queued.dec()
        return self.items.popleft()

    def first_cursor(self) -> TenantCursor | None:
        """The cursor of the oldest queued event, or None."""
        return self.items[0].cursor if self.items else None

    async def wait(self) -> None:
        """Until an event is queued or the client is dropped."""
        while not self.items and not self.dropped:
            self.wake.clear()
            await self.wake.wait()


@dataclass(eq=False)
class _Feed:
    task: asyncio.Task[None] | None = None
    clients: set[HubClient] = field(default_factory=set)


class TenantHub:
    """The per-process fan-out of tenant streams."""

    def __init__(self, store: RunStateStore, metrics: ApiMetrics, *, client_queue: int) -> None:
        self._store, self._metrics, self._limit = store, metrics, client_queue
        self._feeds: dict[str, _Feed] = {}

    @property
    def followers(self) -> int:
        """How many tenants are being followed now."""
        return len(self._feeds)

    @contextlib.contextmanager
    def subscribe(self, tenant_id: str) -> Iterator[HubClient]:
        """A client of ``tenant_id``'s feed (started if needed) until the block ends.

        Everything the feed reads after this call is queued for the client (a feed that
        starts now begins at the stream's current end).
        """
        feed = self._feeds.get(tenant_id)
        if feed is None:
            feed = self._feeds[tenant_id] = _Feed()
            feed.task = asyncio.create_task(self._follow(tenant_id, feed),
                                            name=f"dvt-tenant-feed-{tenant_id}")
            self._metrics.sse_followers.inc()
        client = HubClient(self._limit, self._metrics.sse_queued)
        feed.clients.add(client)
        try:
            yield client
        finally:
            self._discard(client, feed)
            if not feed.clients and self._feeds.get(tenant_id) is feed:
                del self._feeds[tenant_id]
                self._metrics.sse_followers.dec()
                if feed.task is not None:
                    feed.task.cancel()

    async def close(self) -> None:
        """Stop every feed (their clients are dropped)."""
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            for client in list(feed.clients):
                self._drop(client, feed)
        for feed in feeds:
            if feed.task is not None:
                await cancel_and_wait(feed.task)
        self._metrics.sse_followers.dec(len(feeds))

    async def _follow(self, tenant_id: str, feed: _Feed) -> None:
        try:
            async for item in self._store.follow_tenant(tenant_id):
                self._lag(item)
                for client in list(feed.clients):
                    if len(client.items) >= client.limit:
                        self._drop(client, feed)
                        continue
                    client.items.append(item)
                    self._metrics.sse_queued.inc()
                    client.wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the clients end and resume by cursor on a new feed
            log.warning("tenant feed stopped", extra={"code": type(exc).__name__})
            if self._feeds.get(tenant_id) is feed:
                del self._feeds[tenant_id]
                self._metrics.sse_followers.dec()
            for client in list(feed.clients):
                self._drop(client, feed)

    def _lag(self, item: TenantEvent) -> None:
        persisted = item.event.persisted_at
        if persisted is not None:
            lag = (utc_now() - persisted).total_seconds()
            self._metrics.projection_lag.labels("tenant_stream").observe(max(0.0, lag))

    def _drop(self, client: HubClient, feed: _Feed) -> None:
        self._discard(client, feed)
        client.dropped = True
        client.wake.set()
        self._metrics.sse_dropped.inc()

    def _discard(self, client: HubClient, feed: _Feed) -> None:
        feed.clients.discard(client)
        self._metrics.sse_queued.dec(len(client.items))
        client.items.clear()
