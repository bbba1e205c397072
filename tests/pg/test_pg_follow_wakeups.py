"""What wakes a PostgreSQL tenant follower: notifications, and re-reads only while held back.

The stores here have a fallback of an hour: a test that passes within its bound was served by
a notification or by the held-back re-read, never by the fallback timer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest

from contract_tests.store_helpers import WAIT_S, TenantCollector, make_header, new_id
from dvt_engine.eventlog import EventFactory
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunHeader
from dvt_engine.ports import TENANT_LOG_START
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import store_url

HOUR = "3600"


def _steps(header: RunHeader) -> list[Event]:
    factory = EventFactory(header, emitted_by="step-runner")
    return [factory.step_event("StepStarted", s.step_id, {"kind": "noop"}) for s in header.steps]


@pytest.fixture
async def quiet_store(pg_dsn: str, pg_schema: str) -> AsyncIterator[PostgresRunStateStore]:
    """A store whose followers re-read on their own only while events are held back."""
    url = store_url(pg_dsn, pg_schema, fallback_interval=HOUR, poll_interval="0.2")
    store = await PostgresRunStateStore.open(url)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def notified_store(pg_dsn: str, pg_schema: str) -> AsyncIterator[PostgresRunStateStore]:
    """A store whose followers never re-read on a timer within a test: only notifications."""
    url = store_url(pg_dsn, pg_schema, fallback_interval=HOUR, poll_interval=HOUR)
    store = await PostgresRunStateStore.open(url)
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def _held_open(dsn: str, store: PostgresRunStateStore,
                     events: Sequence[Event]) -> AsyncIterator[None]:
    """Append through the store's own append path in a transaction left open until the exit."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn, conn.transaction():
        run = (events[0].tenant_id, events[0].run_id)
        results, _ = await store._append_run(conn, run, list(events), set())
        assert not any(r.duplicate for r in results.values())
        yield


@contextlib.asynccontextmanager
async def _horizon_held(dsn: str) -> AsyncIterator[None]:
    """A transaction with an id that writes no event: it holds the horizon, ends silently."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn, conn.transaction():
        await conn.execute("SELECT pg_current_xact_id()")
        yield


async def _listening(store: PostgresRunStateStore) -> None:
    notifier = store._notifier_for()
    assert await notifier.wait_listening(WAIT_S), "the listener did not connect"


def _watch_held_back(store: PostgresRunStateStore) -> asyncio.Event:
    """Set once one of ``store``'s followers has read a page that says "held back"."""
    seen = asyncio.Event()
    read = store._stream_page

    async def watched(conn: Any, *, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        rows = await read(conn, params=params)
        if rows and rows[-1][0] is None:
            seen.set()
        return rows

    store._stream_page = watched  # type: ignore[method-assign]
    return seen


async def test_a_late_commit_is_delivered_by_its_own_notification(
    notified_store: PostgresRunStateStore, pg_dsn: str
) -> None:
    # The held transaction takes its id and positions first and commits last: the events
    # after it wait above the horizon until then, and its commit's notification wakes the
    # follower (both timers are an hour).
    store = notified_store
    tenant = new_id("tenant")
    held_run, _ = await store.register_run(make_header(tenant_id=tenant, steps=["a", "b"]))
    busy, _ = await store.register_run(
        make_header(tenant_id=tenant, steps=[f"s{i}" for i in range(4)]))
    await _listening(store)
    follower = TenantCollector(store.follow_tenant(tenant, after=TENANT_LOG_START))
    later = _steps(busy)
    try:
        async with _held_open(pg_dsn, store, _steps(held_run)):
            for event in later:
                await store.append(event)
        assert await follower.wait_for(2 + len(later), timeout=WAIT_S), (
            f"late commit not delivered: got {len(follower.items)}")
    finally:
        await follower.stop()
    got = [e.run_id for e in follower.events]
    assert sorted(got[:2]) == [held_run.run_id] * 2, "the late commit is first in commit order"
    assert [e.run_seq for e in follower.events if e.run_id == busy.run_id] == [1, 2, 3, 4]


async def test_events_behind_a_silent_transaction_arrive_by_the_held_back_re_read(
    quiet_store: PostgresRunStateStore, pg_dsn: str
) -> None:
    # The horizon is held by a transaction that writes no event, so its end notifies nobody:
    # the follower, having seen events held back, re-reads every poll_interval until it ends.
    store = quiet_store
    tenant = new_id("tenant")
    header, _ = await store.register_run(
        make_header(tenant_id=tenant, steps=[f"s{i}" for i in range(3)]))
    await _listening(store)
    events = _steps(header)
    held_back_seen = _watch_held_back(store)
    follower: TenantCollector | None = None
    try:
        async with _horizon_held(pg_dsn):
            for event in events:
                await store.append(event)
            follower = TenantCollector(store.follow_tenant(tenant, after=TENANT_LOG_START))
            # Commit only after the follower has read once, so it saw the events held back.
            async with asyncio.timeout(WAIT_S):
                await held_back_seen.wait()
            assert follower.items == [], "events above the horizon were delivered"
        assert await follower.wait_for(len(events), timeout=WAIT_S), (
            f"held-back events not re-read: got {len(follower.items)}")
    finally:
        if follower is not None:
            await follower.stop()
    assert [e.event_id for e in follower.events] == [e.event_id for e in events]


async def test_a_page_says_when_committed_events_are_held_back(
    quiet_store: PostgresRunStateStore, pg_dsn: str
) -> None:
    store = quiet_store
    tenant = new_id("tenant")
    header, _ = await store.register_run(make_header(tenant_id=tenant, steps=["a", "b"]))
    params: dict[str, Any] = {"tenant": tenant, "xid": "0", "position": 0, "limit": 500}

    async def page() -> list[tuple[Any, ...]]:
        return await store._run(lambda conn: store._stream_page(conn, params=params))

    async with _horizon_held(pg_dsn):
        for event in _steps(header):
            await store.append(event)
        held = await page()
    assert len(held) == 1, "only the held-back marker while held"
    assert held[0][0] is None
    free = await page()
    assert [row[0] is None for row in free] == [False, False]
    assert [row[2] for row in free] == [1, 2]
