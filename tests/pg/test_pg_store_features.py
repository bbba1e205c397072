"""What the PostgreSQL store does beyond the shared contract: URLs, outbox, projection, rebuild."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import psycopg
import pytest
from psycopg import sql

from contract_tests.store_suite import Collector, fresh_copy, happy_path, make_header
from dvt_engine.errors import StoreUnavailable, UsageError
from dvt_engine.eventlog import EventFactory
from dvt_engine.models.run import RunStatus
from dvt_engine.plugins import open_store
from dvt_engine.projector import project
from dvt_statestore_pg import admin
from dvt_statestore_pg.config import parse_store_url
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import store_url

Factory = Callable[[], Awaitable[PostgresRunStateStore]]


def _count(dsn: str, schema: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        ).fetchone()
    assert row is not None
    return int(row[0])


# --- URLs and opening ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_open_store_by_url_through_the_entry_point(
    pg_dsn: str, pg_schema: str, scheme: str
) -> None:
    url = store_url(pg_dsn, pg_schema).replace("postgresql://", f"{scheme}://", 1)
    store = await open_store(url)
    try:
        assert isinstance(store, PostgresRunStateStore)
        assert store.config.schema == pg_schema
        header, created = await store.register_run(make_header())
        assert created
        assert await store.get_run(header.tenant_id, header.run_id) == header
    finally:
        await store.close()


def test_url_options_are_split_from_libpq_parameters() -> None:
    config = parse_store_url(
        "postgres://u:secret@db:5433/app?sslmode=disable&schema=tenant_a&pool_max=4&outbox=false"
    )
    assert config.schema == "tenant_a"
    assert config.pool_max == 4
    assert not config.outbox
    assert config.conninfo == "postgresql://u:secret@db:5433/app?sslmode=disable"
    assert "secret" not in config.redacted()
    for bad in [
        "mysql://x/y",
        "postgresql://x/y?schema=a|b",
        "postgresql://x/y?pool_max=zero",
        "postgresql://x/y?migrate=perhaps",
        "postgresql://x/y?pool_min=5&pool_max=2",
    ]:
        with pytest.raises(UsageError):
            parse_store_url(bad)


async def test_unreachable_server_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await PostgresRunStateStore.open("postgresql://postgres@127.0.0.1:1/none?timeout=1")
    assert caught.value.retryable


async def test_without_migration_the_store_says_so_with_a_code(pg_dsn: str) -> None:
    store = await PostgresRunStateStore.open(
        store_url(pg_dsn, "dvt_never_migrated", migrate="false")
    )
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.register_run(make_header())
        assert not caught.value.retryable
    finally:
        await store.close()


async def test_admin_migrate_is_idempotent(pg_dsn: str, pg_schema: str) -> None:
    url = store_url(pg_dsn, pg_schema)
    await admin.migrate(url)
    assert await admin.migrate(url) == []


# --- outbox -------------------------------------------------------------------------------


async def test_outbox_rows_are_written_with_the_events_and_only_for_new_ones(
    pg_store: PostgresRunStateStore, pg_dsn: str, pg_schema: str
) -> None:
    header, _ = await pg_store.register_run(make_header())
    events = happy_path(header)
    # Drain what earlier tests left, so the assertions below see only this run.
    while leased := await pg_store.claim_outbox(limit=1000):
        await pg_store.ack_outbox([item.id for item in leased])
    await pg_store.append_batch(events[:3])
    await pg_store.append(fresh_copy(events[0]))
    with pytest.raises(Exception):  # noqa: B017, PT011 - the batch fails as a whole
        await pg_store.append_batch([events[3], happy_path(make_header())[0]])
    leased = await pg_store.claim_outbox(limit=100)
    assert [item.event.event_id for item in leased] == [e.event_id for e in events[:3]]
    assert await pg_store.claim_outbox(limit=100) == []  # leased to us, hidden from others
    await pg_store.ack_outbox([item.id for item in leased])
    await pg_store.append(events[3])
    (item,) = await pg_store.claim_outbox(limit=100)
    assert item.event.event_id == events[3].event_id
    # Acknowledged rows leave the table: it holds only the row still leased.
    await pg_store.ack_outbox([item.id])
    await pg_store.ack_outbox([item.id])  # a repeated ack is harmless
    assert await pg_store.claim_outbox(limit=100) == []
    assert _count(pg_dsn, pg_schema, "dvt_outbox") == 0


async def test_outbox_can_be_turned_off(pg_dsn: str, pg_schema: str) -> None:
    store = await PostgresRunStateStore.open(store_url(pg_dsn, pg_schema, outbox="false"))
    try:
        before = _count(pg_dsn, pg_schema, "dvt_outbox")
        header, _ = await store.register_run(make_header())
        await store.append_batch(happy_path(header))
        assert _count(pg_dsn, pg_schema, "dvt_outbox") == before
    finally:
        await store.close()


# --- projection ---------------------------------------------------------------------------


async def _big_run_workload(store: PostgresRunStateStore, steps: int) -> tuple[str, str]:
    header, _ = await store.register_run(make_header(steps=[f"s{i:03d}" for i in range(steps)]))
    events = happy_path(header)
    for i in range(0, len(events), 7):
        await store.append_batch(events[i : i + 7])
    return header.tenant_id, header.run_id


async def test_large_runs_store_snapshots_lazily_and_readers_stay_current(
    pg_store: PostgresRunStateStore, pg_dsn: str, pg_schema: str
) -> None:
    tenant, run = await _big_run_workload(pg_store, 100)
    header = await pg_store.get_run(tenant, run)
    assert header is not None
    log = await pg_store.fetch_events(tenant, run)
    snapshot = await pg_store.get_snapshot(tenant, run)
    assert snapshot is not None
    assert snapshot.model_dump_json() == project(header, log).model_dump_json()
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT snapshot_seq, last_seq, status FROM {} WHERE run_id = %s").format(
                sql.Identifier(pg_schema, "dvt_runs")
            ),
            (run,),
        ).fetchone()
    assert row is not None
    # The run completed, so its stored snapshot is current; the status index always is.
    assert row[0] == row[1] == log[-1].run_seq
    assert row[2] == "COMPLETED"


async def test_catch_up_and_rebuild_give_byte_identical_snapshots(
    pg_store: PostgresRunStateStore, pg_dsn: str, pg_schema: str
) -> None:
    tenant = "tenant-rebuild"
    runs = []
    for steps in (3, 40, 120):
        header, _ = await pg_store.register_run(
            make_header(tenant_id=tenant, steps=[f"s{i}" for i in range(steps)])
        )
        events = happy_path(header)[:-1]  # leave the runs RUNNING: snapshots stay lazy
        for i in range(0, len(events), 5):
            await pg_store.append_batch(events[i : i + 5])
        runs.append(header.run_id)
    before = {r: (await pg_store.get_snapshot(tenant, r)) for r in runs}
    url = store_url(pg_dsn, pg_schema)
    caught_up = await admin.catch_up(url, tenant_id=tenant)
    assert caught_up.written >= 1
    assert not caught_up.raced

    def stored(run_id: str) -> str:
        with psycopg.connect(pg_dsn) as conn:
            row = conn.execute(
                sql.SQL(
                    "SELECT snapshot::text, snapshot_seq, last_seq FROM {} WHERE run_id = %s"
                ).format(sql.Identifier(pg_schema, "dvt_runs")),
                (run_id,),
            ).fetchone()
        assert row is not None
        assert row[1] == row[2]
        return str(row[0])

    for run_id, snapshot in before.items():
        assert snapshot is not None
        assert stored(run_id) == snapshot.model_dump_json()
    report = await admin.rebuild(url, tenant_id=tenant)
    assert report.runs == 3
    assert report.written == 3
    assert report.differed == []
    assert report.raced == []
    logs = [await pg_store.fetch_events(tenant, r) for r in runs]
    assert report.events == sum(len(log) for log in logs)
    for run_id, snapshot in before.items():
        assert snapshot is not None
        assert stored(run_id) == snapshot.model_dump_json()
        again = await pg_store.get_snapshot(tenant, run_id)
        assert again is not None
        assert again.model_dump_json() == snapshot.model_dump_json()


async def test_rebuild_repairs_a_damaged_snapshot_and_says_so(
    pg_store: PostgresRunStateStore, pg_dsn: str, pg_schema: str
) -> None:
    header, _ = await pg_store.register_run(make_header(tenant_id="tenant-damage"))
    await pg_store.append_batch(happy_path(header))
    good = await pg_store.get_snapshot(header.tenant_id, header.run_id)
    assert good is not None
    damaged = good.model_copy(update={"status": RunStatus.FAILED}).model_dump_json()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET snapshot = %s WHERE run_id = %s").format(
                sql.Identifier(pg_schema, "dvt_runs")
            ),
            (damaged, header.run_id),
        )
    report = await admin.rebuild(store_url(pg_dsn, pg_schema), tenant_id="tenant-damage")
    assert report.differed == [header.run_id]
    fixed = await pg_store.get_snapshot(header.tenant_id, header.run_id)
    assert fixed is not None
    assert fixed.model_dump_json() == good.model_dump_json()


# --- follow -------------------------------------------------------------------------------


async def test_follow_survives_losing_the_notification_connection(
    pg_store: PostgresRunStateStore, pg_store_factory: Factory, pg_dsn: str
) -> None:
    header, _ = await pg_store.register_run(make_header(steps=[f"s{i}" for i in range(6)]))
    events = happy_path(header)
    writer = await pg_store_factory()
    follower = Collector(pg_store.follow(header.tenant_id, header.run_id))
    try:
        await writer.append(events[0])
        assert await follower.wait_for(1)
        notifier = pg_store._notifier
        assert notifier is not None
        assert await notifier.wait_listening(10)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN %%' AND pid <> pg_backend_pid()"
            ).fetchall()
        assert killed
        for event in events[1:]:
            await writer.append(event)
        assert await follower.wait_for(len(events)), "events were lost with the listener"
    finally:
        await follower.stop()
    assert [e.event_id for e in follower.events] == [e.event_id for e in events]


async def test_many_followers_share_one_listener(
    pg_store: PostgresRunStateStore, pg_store_factory: Factory
) -> None:
    headers = [(await pg_store.register_run(make_header()))[0] for _ in range(5)]
    writer = await pg_store_factory()
    followers = [Collector(pg_store.follow(h.tenant_id, h.run_id)) for h in headers]
    try:
        await asyncio.gather(*(writer.append_batch(happy_path(h)) for h in headers))
        for header, follower in zip(headers, followers, strict=True):
            assert await follower.wait_for(len(happy_path(header)))
            assert {e.run_id for e in follower.events} == {header.run_id}
    finally:
        for follower in followers:
            await follower.stop()


async def test_signal_decisions_on_a_terminal_run_are_recorded(
    pg_store: PostgresRunStateStore,
) -> None:
    header, _ = await pg_store.register_run(make_header())
    await pg_store.append_batch(happy_path(header))
    f = EventFactory(header, emitted_by="operator")
    from dvt_engine.idempotency import signal_key

    key = signal_key(header.tenant_id, header.run_id, "late-pause")
    decision = f.signal_event(
        "SignalRejected",
        key,
        {
            "signalId": "late-pause",
            "signalType": "PAUSE",
            "actor": {"id": "ops", "roles": ["operator"]},
            "errorCode": "RUN_TERMINAL",
        },
    )
    first = await pg_store.append(decision)
    again = await pg_store.append(fresh_copy(decision))
    assert again.duplicate
    assert again.run_seq == first.run_seq
    snapshot = await pg_store.get_snapshot(header.tenant_id, header.run_id)
    assert snapshot is not None
    assert snapshot.status == "COMPLETED"
    assert snapshot.last_event_seq == first.run_seq


async def test_rebuild_stores_snapshots_with_escapes_byte_for_byte(
    pg_store: PostgresRunStateStore, pg_dsn: str, pg_schema: str
) -> None:
    # Snapshots travel to the database inside a JSON document: every escape must come back
    # as the same text.
    header, _ = await pg_store.register_run(
        make_header(tenant_id="tenant-escapes", steps=["a", "b"])
    )
    tricky = {"output": {"text": 'é ✓ \u2028 \\ " \t ctl\x01 \U0001f600', "n": 1.5}}
    events = happy_path(header)
    events[4] = events[4].model_copy(update={"payload": tricky})
    await pg_store.append_batch(events)
    before = await pg_store.get_snapshot(header.tenant_id, header.run_id)
    assert before is not None
    assert "\\u0001" in before.model_dump_json()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        damaged = before.model_copy(update={"status": RunStatus.FAILED}).model_dump_json()
        conn.execute(sql.SQL("UPDATE {} SET snapshot = %s WHERE run_id = %s").format(
            sql.Identifier(pg_schema, "dvt_runs")), (damaged, header.run_id))
    report = await admin.rebuild(store_url(pg_dsn, pg_schema), tenant_id="tenant-escapes")
    assert report.differed == [header.run_id]
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(sql.SQL("SELECT snapshot::text FROM {} WHERE run_id = %s").format(
            sql.Identifier(pg_schema, "dvt_runs")), (header.run_id,)).fetchone()
    assert row is not None
    assert row[0] == before.model_dump_json()
