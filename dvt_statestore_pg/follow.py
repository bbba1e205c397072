"""Followers: one run's events in runSeq order, and a tenant's events in commit order.

A tenant stream's cursor is ``"<commit_xid>.<position>"`` (migration 0003): the writing
transaction's id and a store-wide sequence number. A follower reads only events whose
transaction is older than the oldest transaction still in progress, so an event is never
delivered after one with a larger cursor, whatever the writers' timing: a transaction that is
open for minutes holds the stream back for that long but is never skipped.

Followers wake on LISTEN/NOTIFY: every append notifies when it commits, after its events are
visible, so an event held back behind an older writer is delivered by that writer's own
notification when it commits (or by the next append's). The re-read without a notification is
only a safety net while the listener is connected (``fallback_interval``, 30 s), with two
exceptions: while the listener is down, and while committed events wait behind a transaction
that wrote no event (any transaction of the server with an id holds the horizon, and its end
notifies nobody), when the follower re-reads every ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import psycopg

from dvt_engine.errors import StoreUnavailable, UsageError
from dvt_engine.models.events import Event
from dvt_engine.ports import TENANT_LOG_START, TenantCursor, TenantEvent
from dvt_statestore_pg.core import Conn, StoreCore, event_from_row, store_error, valid_ids
from dvt_statestore_pg.notify import Notifier

FOLLOW_PAGE = 500
_CURSOR = re.compile(r"^(\d{1,20})\.(\d{1,19})$")
_T = TypeVar("_T")
_log = logging.getLogger(__name__)


def parse_cursor(cursor: TenantCursor) -> tuple[str, int]:
    """(commit_xid, position) of a cursor of this store; UsageError for anything else."""
    if cursor == TENANT_LOG_START:
        return "0", 0
    match = _CURSOR.match(cursor) if isinstance(cursor, str) else None
    if match is None:
        raise UsageError(f"not a tenant cursor of the PostgreSQL store: {cursor!r}")
    return match.group(1), int(match.group(2))


def format_cursor(xid: str, position: int) -> TenantCursor:
    """The cursor right after the event at (commit_xid, position)."""
    return f"{xid}.{position}"


class FollowerConnection:
    """A follower's own connection, outside the append pool, re-opened with back-off.

    A follower must not compete with writers for pooled connections (appends blocked on row
    locks would starve it into a pool timeout), and it never gives up: it runs until its
    consumer stops, so a lost connection is retried for as long as it takes.
    """

    def __init__(self, conninfo: str, *, max_delay: float = 2.0) -> None:
        self._conninfo = conninfo
        self._conn: Conn | None = None
        self._max_delay = max_delay

    async def run(self, work: Callable[[Conn], Awaitable[_T]]) -> _T:
        """Run ``work`` (a read) on the connection, reconnecting until it succeeds."""
        delay = 0.05
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self._conninfo, autocommit=True
                    )
                return await work(self._conn)
            except psycopg.OperationalError as exc:
                _log.debug("follower connection lost: %s", exc)
                await self.close()
                await asyncio.sleep(delay)  # back-off before reconnecting
                delay = min(delay * 2, self._max_delay)
            except psycopg.Error as exc:
                raise store_error(exc) from exc

    async def close(self) -> None:
        """Close the connection (a later ``run`` opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


class Follower(StoreCore):
    """follow and follow_tenant on LISTEN/NOTIFY wake-ups, reading the log from a cursor."""

    async def fetch_events(
        self, tenant_id: str, run_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        """Events of a run with runSeq > after_seq, ascending."""
        if (limit is not None and limit <= 0) or not valid_ids(tenant_id, run_id):
            return []

        async def work(conn: Conn) -> list[Event]:
            cur = await conn.execute(self._q.fetch, (run_id, tenant_id, after_seq, limit))
            return [event_from_row(*row) for row in await cur.fetchall()]

        return await self._run(work)

    async def follow(
        self, tenant_id: str, run_id: str | None = None, *, after_seq: int = 0
    ) -> AsyncIterator[Event]:
        """New events of one run (runSeq order) or of every run of the tenant."""
        if run_id is None:
            async for item in self.follow_tenant(tenant_id):
                yield item.event
            return
        await self._ensure_open()
        notifier = self._notifier_for()
        watermark = after_seq
        with notifier.subscribe(tenant_id, run_id) as waiter:
            while True:
                waiter.event.clear()
                try:
                    batch = await self.fetch_events(
                        tenant_id, run_id, after_seq=watermark, limit=FOLLOW_PAGE
                    )
                except StoreUnavailable as exc:
                    if not exc.retryable:
                        raise
                    # The pool stayed busy or the server away past the timeout: a follower
                    # keeps waiting rather than dying; its watermark is where it resumes.
                    batch = []
                for event in batch:
                    assert event.run_seq is not None
                    watermark = event.run_seq
                    yield event
                if len(batch) < FOLLOW_PAGE:
                    await self._pause(notifier, waiter.event)

    async def follow_tenant(
        self, tenant_id: str, *, after: TenantCursor | None = None
    ) -> AsyncIterator[TenantEvent]:
        """Every committed event of the tenant, in commit order, each with its cursor."""
        start = parse_cursor(after) if after is not None else None
        await self._ensure_open()
        notifier = self._notifier_for()
        if not valid_ids(tenant_id):
            with notifier.subscribe(tenant_id, None) as waiter:
                while True:
                    await self._pause(notifier, waiter.event)
        conn = FollowerConnection(self.config.conninfo)
        try:
            # Subscribed before the first read, so no wake-up between the two is lost.
            with notifier.subscribe(tenant_id, None) as waiter:
                xid, position = start if start is not None else (await conn.run(self._head), 0)
                while True:
                    waiter.event.clear()
                    params = {
                        "tenant": tenant_id,
                        "xid": xid,
                        "position": position,
                        "limit": FOLLOW_PAGE,
                    }
                    rows = await conn.run(partial(self._stream_page, params=params))
                    held_back = bool(rows) and rows[-1][0] is None
                    if held_back:
                        rows.pop()
                    for row_xid, row_position, run_seq, persisted_at, envelope in rows:
                        xid, position = row_xid, int(row_position)
                        event = event_from_row(run_seq, persisted_at, envelope)
                        yield TenantEvent(format_cursor(xid, position), event)
                    if len(rows) < FOLLOW_PAGE:
                        await self._pause(notifier, waiter.event, held_back=held_back)
        finally:
            await conn.close()

    async def _head(self, conn: Conn) -> str:
        cur = await conn.execute(self._q.stream_head)
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    async def _stream_page(
        self, conn: Conn, *, params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        cur = await conn.execute(self._q.tenant_stream, params)
        return list(await cur.fetchall())

    async def _pause(
        self, notifier: Notifier, waiter_event: asyncio.Event, *, held_back: bool = False
    ) -> None:
        # Wait for a notification. The timeout is the polling fallback: short while the
        # listener is down or events are held back (see the module docstring), long otherwise.
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the event is set, and the follower would never stop.
        if not notifier.listening:
            timeout = min(0.2, self.config.poll_interval)
        elif held_back:
            timeout = self.config.poll_interval
        else:
            timeout = self.config.fallback_interval
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await waiter_event.wait()
