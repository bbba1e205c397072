"""Failures a production store meets: killed connections, a crashing server, duplicate storms."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from contract_tests.store_suite import Collector, fresh_copy, happy_path, make_header, new_id
from dvt_engine.errors import DvtError, ErrorCode, StoreUnavailable
from dvt_engine.eventlog import EventFactory
from dvt_engine.models.events import AppendResult, Event
from dvt_engine.projector import project
from dvt_local.postgres import PostgresServer, PostgresServerError, start_server
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import store_url

Factory = Callable[[], Awaitable[PostgresRunStateStore]]
WAIT_S = 30.0


async def wait_until(
    probe: Callable[[], Awaitable[Any]], what: str, timeout: float = WAIT_S
) -> Any:
    """Poll ``probe`` until it returns something truthy, bounded by ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.02)  # between probes of the database's own state
    raise AssertionError(f"timed out waiting for {what}")


def _one_row(dsn: str, query: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row


async def _assert_log_intact(
    store: PostgresRunStateStore,
    tenant: str,
    run_id: str,
    expected: list[Event],
    acked: dict[str, AppendResult],
) -> None:
    log = await store.fetch_events(tenant, run_id)
    keys = [e.idempotency_key for e in log]
    assert len(keys) == len(set(keys)), "an event was stored twice"
    assert sorted(keys) == sorted(e.idempotency_key for e in expected), "an event is missing"
    seqs = [e.run_seq or 0 for e in log]
    assert seqs == sorted(set(seqs))
    by_key = {e.idempotency_key: e for e in log}
    for key, result in acked.items():
        if key in by_key:
            assert (by_key[key].run_seq, by_key[key].event_id) == (result.run_seq, result.event_id)
    header = await store.get_run(tenant, run_id)
    snapshot = await store.get_snapshot(tenant, run_id)
    assert header is not None
    assert snapshot is not None
    assert snapshot.model_dump_json() == project(header, log).model_dump_json()


# --- a connection killed in the middle of a batch ------------------------------------------


async def _blocked_batch_backend(dsn: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE %s AND pid <> pg_backend_pid()",
            ("%dvt_append_events%",),
        ).fetchone()
    return int(row[0]) if row else None


async def _kill_mid_batch(
    store: PostgresRunStateStore, dsn: str, schema: str
) -> tuple[str, list[Event], list[Event], asyncio.Task[list[AppendResult]]]:
    """Start a batch over two runs, hold it at the second run's lock, kill its connection."""
    tenant = new_id("tenant")
    first, _ = await store.register_run(make_header(tenant_id=tenant, run_id=new_id("run-a")))
    second, _ = await store.register_run(make_header(tenant_id=tenant, run_id=new_id("run-b")))
    a, b = happy_path(first), happy_path(second)
    blocker = await psycopg.AsyncConnection.connect(dsn)
    await blocker.execute(
        sql.SQL("SELECT 1 FROM {} WHERE run_id = %s FOR UPDATE").format(
            sql.Identifier(schema, "dvt_runs")
        ),
        (second.run_id,),
    )
    task = asyncio.create_task(store.append_batch(a + b))
    try:
        # Runs are appended in runId order: the first run's events are written, then the
        # batch waits for the second run's lock. That is where its connection dies.
        pid = await wait_until(lambda: _blocked_batch_backend(dsn), "the batch to block")
        _one_row(dsn, "SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        await blocker.rollback()
        await blocker.close()
    return tenant, a, b, task


async def test_killed_connection_mid_batch_is_retried_and_stores_each_event_once(
    pg_store: PostgresRunStateStore, pg_dsn: str, pg_schema: str
) -> None:
    tenant, a, b, task = await _kill_mid_batch(pg_store, pg_dsn, pg_schema)
    results = await asyncio.wait_for(task, WAIT_S)
    assert not any(r.duplicate for r in results), "our own retried write is not a duplicate"
    acked = {e.idempotency_key: r for e, r in zip(a + b, results, strict=True)}
    await _assert_log_intact(pg_store, tenant, a[0].run_id, a, acked)
    await _assert_log_intact(pg_store, tenant, b[0].run_id, b, acked)


async def test_killed_connection_without_retry_leaves_nothing_half_written(
    pg_dsn: str, pg_schema: str
) -> None:
    store = await PostgresRunStateStore.open(store_url(pg_dsn, pg_schema, timeout="0.01"))
    try:
        tenant, a, b, task = await _kill_mid_batch(store, pg_dsn, pg_schema)
        with pytest.raises(StoreUnavailable) as caught:
            await asyncio.wait_for(task, WAIT_S)
        assert caught.value.retryable
        assert await store.fetch_events(tenant, a[0].run_id) == []
        assert await store.fetch_events(tenant, b[0].run_id) == []
        # The producer retries; the store's view of the runs recovers from the database.
        results = await store.append_batch(a + b)
        assert not any(r.duplicate for r in results)
        acked = {e.idempotency_key: r for e, r in zip(a + b, results, strict=True)}
        await _assert_log_intact(store, tenant, a[0].run_id, a, acked)
    finally:
        await store.close()


# --- the server crashes and restarts in the middle of runs ---------------------------------


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PostgresServer]:
    """A server this module may crash: always started here, whatever DVT_PG_DSN says."""
    try:
        server = start_server()
    except PostgresServerError as exc:
        pytest.fail(f"PostgreSQL server unavailable: {exc}")
    try:
        yield server
    finally:
        server.destroy()


async def test_server_crash_mid_run_loses_no_acknowledged_event(
    private_pg: PostgresServer,
) -> None:
    url = store_url(private_pg.dsn(), "dvt_crash", timeout="60", poll_interval="0.5")
    store = await PostgresRunStateStore.open(url)
    try:
        tenant = new_id("tenant")
        headers = [
            (
                await store.register_run(
                    make_header(tenant_id=tenant, steps=[f"s{i}" for i in range(25)])
                )
            )[0]
            for _ in range(4)
        ]
        plans = {h.run_id: happy_path(h) for h in headers}
        follower = Collector(store.follow(tenant, headers[0].run_id))
        acked: dict[str, AppendResult] = {}
        refused: list[Event] = []
        crash: asyncio.Task[None] | None = None
        position = 0
        longest = max(len(v) for v in plans.values())
        while position < longest:
            for run_events in plans.values():
                chunk = run_events[position : position + 3]
                if not chunk:
                    continue
                try:
                    if len(chunk) == 1:
                        acked[chunk[0].idempotency_key] = await store.append(chunk[0])
                    else:
                        for e, r in zip(chunk, await store.append_batch(chunk), strict=True):
                            acked[e.idempotency_key] = r
                except StoreUnavailable:
                    refused.extend(chunk)
            position += 3
            if crash is None and len(acked) >= 60:
                # Crash (immediate shutdown, then crash recovery) while the writers go on.
                crash = asyncio.create_task(asyncio.to_thread(private_pg.restart, "immediate"))
        assert crash is not None
        await asyncio.wait_for(crash, WAIT_S)
        # What the store refused was never acknowledged: the producer sends it again.
        for event in refused:
            await store.append(fresh_copy(event))
        for header in headers:
            await _assert_log_intact(store, tenant, header.run_id, plans[header.run_id], acked)
        first_run = plans[headers[0].run_id]
        assert await follower.wait_for(len(first_run)), "the follower lost events in the crash"
        await follower.stop()
        assert [e.idempotency_key for e in follower.events] == [
            e.idempotency_key for e in await store.fetch_events(tenant, headers[0].run_id)
        ]
    finally:
        await store.close()


# --- a duplicate storm ---------------------------------------------------------------------


async def test_duplicate_storm_inserts_nothing_and_touches_no_run(
    pg_store: PostgresRunStateStore, pg_store_factory: Factory, pg_dsn: str, pg_schema: str
) -> None:
    tenant = new_id("tenant")
    headers = [
        (await pg_store.register_run(make_header(tenant_id=tenant, steps=["a", "b", "c", "d"])))[0]
        for _ in range(200)
    ]
    events = [e for h in headers for e in happy_path(h)]
    originals = {}
    for i in range(0, len(events), 500):
        for e, r in zip(
            events[i : i + 500], await pg_store.append_batch(events[i : i + 500]), strict=True
        ):
            originals[e.idempotency_key] = r
    runs_table = sql.Identifier(pg_schema, "dvt_runs")
    state_query = sql.SQL(
        "SELECT count(*), max(updated_at),"
        " md5(string_agg(snapshot::text || status, '' ORDER BY run_id))"
        " FROM {} WHERE tenant_id = %s"
    ).format(runs_table)
    events_query = sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
        sql.Identifier(pg_schema, "dvt_events")
    )
    with psycopg.connect(pg_dsn) as conn:
        runs_before = conn.execute(state_query, (tenant,)).fetchone()
        (events_before,) = conn.execute(events_query, (tenant,)).fetchone() or (0,)
    snapshots_before = [await pg_store.get_snapshot(tenant, h.run_id) for h in headers]
    other = await pg_store_factory()

    async def storm(
        store: PostgresRunStateStore, share: list[Event]
    ) -> list[tuple[Event, AppendResult]]:
        answers = []
        for i in range(0, len(share), 500):
            chunk = [fresh_copy(e) for e in share[i : i + 500]]
            answers += list(zip(chunk, await store.append_batch(chunk), strict=True))
        for event in share[:100]:
            answers.append((event, await store.append(fresh_copy(event))))
        return answers

    rounds = 9  # 9 x (2,000 in batches + 400 single appends): 21,600 duplicates
    shares = [events[i::4] for i in range(4)] * rounds
    answers = [
        a
        for part in await asyncio.gather(
            *(storm(pg_store if i % 2 else other, share) for i, share in enumerate(shares))
        )
        for a in part
    ]
    assert len(answers) >= 20_000
    for event, result in answers:
        first = originals[event.idempotency_key]
        assert result.duplicate
        assert (result.run_seq, result.event_id, result.persisted_at) == (
            first.run_seq,
            first.event_id,
            first.persisted_at,
        )
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(state_query, (tenant,)).fetchone() == runs_before
        assert (conn.execute(events_query, (tenant,)).fetchone() or (0,))[0] == events_before
    snapshots_after = [await pg_store.get_snapshot(tenant, h.run_id) for h in headers]
    assert snapshots_after == snapshots_before


# --- hostile input -------------------------------------------------------------------------


async def test_events_that_skip_model_validation_still_get_coded_errors(
    pg_store: PostgresRunStateStore,
) -> None:
    header, _ = await pg_store.register_run(make_header())
    good = happy_path(header)[0]
    for field, value in [("tenant_id", "nul\x00"), ("run_id", "x" * 201), ("step_id", "a|b")]:
        forged = Event.model_construct(**{**dict(good), field: value})
        with pytest.raises(DvtError) as caught:
            await pg_store.append(forged)
        assert caught.value.code in (
            ErrorCode.IDENTIFIER_INVALID,
            ErrorCode.SCHEMA_VALIDATION_FAILED,
        )
    odd_id = "'; DELETE FROM dvt_events; --\"\\\u00e9"
    stored = await pg_store.append(good.model_copy(update={"event_id": odd_id}))
    (event,) = await pg_store.fetch_events(header.tenant_id, header.run_id)
    assert event.event_id == odd_id == stored.event_id


# --- contention on one run -----------------------------------------------------------------


async def test_eight_writers_on_one_run_all_progress_without_errors(
    pg_store: PostgresRunStateStore, pg_store_factory: Factory
) -> None:
    other = await pg_store_factory()
    header, _ = await pg_store.register_run(make_header(steps=[f"s{i}" for i in range(200)]))
    f = EventFactory(header, emitted_by="step-runner")
    await pg_store.append(f.run_event("RunStarted", {"engine": "reference"}))

    async def writer(i: int) -> list[AppendResult]:
        store = pg_store if i % 2 else other
        return [
            await store.append(f.step_event("StepStarted", f"s{n * 8 + i}", {"kind": "noop"}))
            for n in range(25)
        ]

    results = [r for part in await asyncio.gather(*(writer(i) for i in range(8))) for r in part]
    assert not any(r.duplicate for r in results)
    log = await pg_store.fetch_events(header.tenant_id, header.run_id)
    assert len(log) == 201
    assert [e.run_seq for e in log] == list(range(1, 202))
    snapshot = await other.get_snapshot(header.tenant_id, header.run_id)
    assert snapshot is not None
    assert sum(1 for s in snapshot.steps if s.status == "RUNNING") == 200
