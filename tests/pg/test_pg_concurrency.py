"""The tenant stream on PostgreSQL under racing writers, processes, open transactions and kills."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, cast

import psycopg
import pytest
from psycopg import sql

from contract_tests.store_concurrency import (
    WAIT_S,
    ConcurrencyHooks,
    StoreConcurrencySuite,
    append_in_process,
)
from contract_tests.store_helpers import (
    Collector,
    StoreFactory,
    TenantCollector,
    happy_path,
    make_header,
    new_id,
)
from dvt_engine.models.events import Event
from dvt_engine.ports import TENANT_LOG_START, RunStateStore, TenantEvent
from dvt_statestore_pg.notify import channel_for
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import store_url


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessPoolExecutor]:
    """Two writer processes, spawned (not forked) so they share nothing with the test's loop."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


class PostgresHooks(ConcurrencyHooks):
    """Real transactions held open, real backends killed, real writer processes."""

    store_name = "postgresql"

    def __init__(self, dsn: str, schema: str, processes: ProcessPoolExecutor) -> None:
        self.dsn = dsn
        self.schema = schema
        self.processes = processes
        self.spared: set[int] = set()

    @contextlib.asynccontextmanager
    async def held_open(self, store: RunStateStore, events: Sequence[Event]) -> AsyncIterator[None]:
        """Append through the store's own append path inside a transaction left open."""
        pg = cast(PostgresRunStateStore, store)
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        async with conn:
            self.spared.add(conn.info.backend_pid)
            try:
                async with conn.transaction():
                    run = (events[0].tenant_id, events[0].run_id)
                    results, _ = await pg._append_run(conn, run, list(events), set())
                    assert not any(r.duplicate for r in results.values())
                    yield
            finally:
                self.spared.discard(conn.info.backend_pid)

    async def disrupt(self) -> int:
        """pg_terminate_backend on every connection of this schema: pools, listener, followers."""

        def kill() -> int:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE pid <> pg_backend_pid() AND NOT (pid = ANY(%s))"
                    " AND backend_type = 'client backend'"
                    " AND (strpos(query, %s) > 0 OR strpos(query, %s) > 0)",
                    (list(self.spared), f'"{self.schema}"', channel_for(self.schema)),
                ).fetchall()
            return sum(1 for (killed,) in rows if killed)

        return await asyncio.to_thread(kill)

    async def diagnose(self, tenant_id: str, got: list[TenantEvent]) -> str:
        """The stream's horizon, who holds it back, and where the events not received sit."""
        seen = {item.event.event_id for item in got}

        def look() -> str:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                rows = conn.execute(
                    sql.SQL(
                        "SELECT event_id, commit_xid::text, position, run_id, run_seq,"
                        " persisted_at FROM {} WHERE tenant_id = %s ORDER BY commit_xid, position"
                    ).format(sql.Identifier(self.schema, "dvt_events")),
                    (tenant_id,),
                ).fetchall()
                horizon = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
                holders = conn.execute(
                    "SELECT pid, backend_xid::text, state, left(query, 60) FROM pg_stat_activity"
                    " WHERE backend_xid IS NOT NULL"
                ).fetchall()
            missing = [r[1:] for r in rows if r[0] not in seen]
            return (
                f"log: {len(rows)} events, snapshot: {horizon}, open transactions: {holders},"
                f" last cursor received: {got[-1].cursor if got else None},"
                f" not received (xid, position, run, runSeq, persisted): {missing[:8]}"
            )

        return await asyncio.to_thread(look)

    async def write_elsewhere(self, store: RunStateStore, batches: list[list[Event]]) -> None:
        """Two other processes append the batches (alternating), each through its own store."""
        url = cast(PostgresRunStateStore, store).url
        loop = asyncio.get_running_loop()
        shares = [[[e.model_dump_json() for e in b] for b in batches[i::2]] for i in range(2)]
        written = await asyncio.gather(
            *(loop.run_in_executor(self.processes, append_in_process, url, s) for s in shares)
        )
        assert sum(written) == sum(len(b) for b in batches)


class TestPostgresConcurrency(StoreConcurrencySuite):
    """The concurrency suite on PostgresRunStateStore."""

    @pytest.fixture
    def store(self, pg_store: PostgresRunStateStore) -> RunStateStore:
        return pg_store

    @pytest.fixture
    def store_factory(
        self, pg_store_factory: Callable[[], Awaitable[PostgresRunStateStore]]
    ) -> StoreFactory:
        return pg_store_factory  # type: ignore[return-value]

    @pytest.fixture
    def concurrency_hooks(
        self, pg_dsn: str, pg_schema: str, processes: ProcessPoolExecutor
    ) -> ConcurrencyHooks:
        return PostgresHooks(pg_dsn, pg_schema, processes)


async def _lock_waiters(dsn: str, schema: str) -> int:
    def count() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND strpos(query, 'dvt_append_events') > 0 AND strpos(query, %s) > 0",
                (f'"{schema}"',),
            ).fetchone()
        return int(row[0]) if row else 0

    return await asyncio.to_thread(count)


async def test_followers_outlive_a_pool_full_of_appends_blocked_on_a_lock(
    pg_dsn: str, pg_schema: str, pg_store_factory: Callable[[], Awaitable[PostgresRunStateStore]]
) -> None:
    # Two pooled connections and one second of patience: appends blocked on a row lock hold
    # the whole pool for longer than any read on it may wait.
    store = await PostgresRunStateStore.open(
        store_url(pg_dsn, pg_schema, pool_max="2", timeout="1")
    )
    writer = await pg_store_factory()
    tenant = new_id("tenant")
    # Two runs: appends to one run from one store queue in process, not in the database.
    blocked = [(await store.register_run(make_header(tenant_id=tenant)))[0] for _ in range(2)]
    free, _ = await store.register_run(
        make_header(tenant_id=tenant, steps=[f"s{i}" for i in range(5)])
    )
    stream = TenantCollector(store.follow_tenant(tenant, after=TENANT_LOG_START))
    one_run = Collector(store.follow(tenant, free.run_id))
    blocker = await psycopg.AsyncConnection.connect(pg_dsn)
    appends: list[asyncio.Task[Any]] = []
    try:
        # The run's writer lock, as a long transaction of another writer would hold it.
        for header in blocked:
            await blocker.execute(
                sql.SQL("SELECT pg_advisory_xact_lock({}(%s, %s))").format(
                    sql.Identifier(pg_schema, "dvt_run_lock_key")
                ),
                (tenant, header.run_id),
            )
        held = [happy_path(header)[0] for header in blocked]
        appends = [asyncio.create_task(store.append(e)) for e in held]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while await _lock_waiters(pg_dsn, pg_schema) < 2:
            assert loop.time() < deadline, "the appends never blocked"
            await asyncio.sleep(0.02)  # between probes of the database's own state
        events = happy_path(free)
        for event in events:
            await writer.append(event)
        # The pool is still blocked: the tenant follower reads on its own connection.
        assert await stream.wait_for(len(events), timeout=WAIT_S), "the tenant follower died"
        assert not any(task.done() for task in appends)
        await blocker.rollback()
        await asyncio.wait_for(asyncio.gather(*appends), WAIT_S)
        assert await stream.wait_for(len(events) + len(held), timeout=WAIT_S)
        # The single-run follower waited out its pool timeouts instead of dying.
        assert await one_run.wait_for(len(events), timeout=WAIT_S), "the run follower died"
        assert [e.event_id for e in one_run.events] == [e.event_id for e in events]
    finally:
        await blocker.close()
        for task in appends:
            task.cancel()
        await stream.stop()
        await one_run.stop()
        await store.close()
    ids = [e.event_id for e in stream.events]
    assert sorted(ids) == sorted(e.event_id for e in [*events, *held])
    assert len(ids) == len(set(ids))


async def test_a_replay_pages_through_a_long_log(pg_store: PostgresRunStateStore) -> None:
    tenant = new_id("tenant")
    header, _ = await pg_store.register_run(
        make_header(tenant_id=tenant, steps=[f"s{i}" for i in range(700)])
    )
    events = happy_path(header)
    for i in range(0, len(events), 250):
        await pg_store.append_batch(events[i : i + 250])
    replay = TenantCollector(pg_store.follow_tenant(tenant, after=TENANT_LOG_START))
    try:
        assert await replay.wait_for(len(events), timeout=WAIT_S), len(replay.items)
    finally:
        await replay.stop()
    assert [e.event_id for e in replay.events] == [e.event_id for e in events]


def _burn_transaction_ids_below_a_power_of_ten(dsn: str) -> int:
    """Use up transaction ids until the next one is just below 10**k; returns that power."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert row is not None
        current = int(row[0])
        power = 10 ** len(str(current))
        with conn.pipeline() as pipeline:
            for _ in range(max(0, min(power - current - 3, 50_000))):
                conn.execute("SELECT pg_current_xact_id()")
                pipeline.sync()  # each statement its own transaction, so each takes an id
    return power


async def test_the_stream_orders_transaction_ids_as_numbers(
    pg_store: PostgresRunStateStore, pg_dsn: str
) -> None:
    # '1000' sorts before '999' as text: the stream must cross such a boundary in order.
    tenant = new_id("tenant")
    header, _ = await pg_store.register_run(
        make_header(tenant_id=tenant, steps=[f"s{i}" for i in range(5)])
    )
    events = happy_path(header)
    await pg_store.append(events[0])
    power = await asyncio.to_thread(_burn_transaction_ids_below_a_power_of_ten, pg_dsn)
    for event in events[1:]:
        await pg_store.append(event)
    # One page holds ids on both sides of the power of ten.
    replay = TenantCollector(pg_store.follow_tenant(tenant, after=TENANT_LOG_START))
    try:
        assert await replay.wait_for(len(events), timeout=WAIT_S), len(replay.items)
    finally:
        await replay.stop()
    xids = [int(item.cursor.split(".")[0]) for item in replay.items]
    assert xids == sorted(xids)
    assert min(xids) < power <= max(xids), "the ids did not cross a power of ten"
    assert [e.event_id for e in replay.events] == [e.event_id for e in events]
