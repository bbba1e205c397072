"""`dvt store rebuild` over many pages of runs: the next page is read and the last one written
while a page is folded, and the stored snapshots are the incremental ones, byte for byte."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from contract_tests.store_suite import happy_path, make_header
from dvt_engine.models.run import RunStatus
from dvt_engine.projector import project
from dvt_statestore_pg import admin
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import store_url


def _stored(dsn: str, schema: str, tenant: str) -> dict[str, tuple[str, int, int, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT run_id, snapshot::text, snapshot_seq, last_seq, status FROM {}"
                    " WHERE tenant_id = %s").format(sql.Identifier(schema, "dvt_runs")),
            (tenant,)).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


async def test_a_rebuild_of_many_pages_stores_every_incremental_snapshot(
    pg_store: PostgresRunStateStore, pg_dsn: str, pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = "tenant-pages"
    runs: list[str] = []
    for i in range(7):
        header, _ = await pg_store.register_run(
            make_header(tenant_id=tenant, steps=[f"s{j}" for j in range(2 + 5 * i)]))
        events = happy_path(header)
        # Some runs finish, some stay RUNNING; one of 40 steps keeps a lagging stored snapshot.
        await pg_store.append_batch(events if i % 2 else events[:-1])
        runs.append(header.run_id)
    incremental = {r: (await pg_store.get_snapshot(tenant, r)) for r in runs}
    damaged = runs[3]  # on the second page of two runs
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        snap = incremental[damaged]
        assert snap is not None
        conn.execute(
            sql.SQL("UPDATE {} SET snapshot = %s, status = 'FAILED' WHERE run_id = %s").format(
                sql.Identifier(pg_schema, "dvt_runs")),
            (snap.model_copy(update={"status": RunStatus.FAILED}).model_dump_json(), damaged))
    monkeypatch.setattr(admin, "RUNS_PER_PAGE", 2)

    report = await admin.rebuild(store_url(pg_dsn, pg_schema), tenant_id=tenant)

    assert report.runs == report.written == 7
    assert report.differed == [damaged]
    assert report.raced == []
    assert report.events == sum([len(await pg_store.fetch_events(tenant, r)) for r in runs])
    stored = _stored(pg_dsn, pg_schema, tenant)
    for run_id, snapshot in incremental.items():
        assert snapshot is not None
        text, snapshot_seq, last_seq, status = stored[run_id]
        assert text == snapshot.model_dump_json()
        assert snapshot_seq == last_seq == snapshot.last_event_seq
        assert status == snapshot.status.value


async def test_catch_up_over_many_pages_reads_only_each_runs_tail(
    pg_store: PostgresRunStateStore, pg_dsn: str, pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = "tenant-pages-tail"
    runs: list[str] = []
    for i in range(5):
        header, _ = await pg_store.register_run(
            make_header(tenant_id=tenant, steps=[f"s{j}" for j in range(3 + i)]))
        await pg_store.append_batch(happy_path(header))
        runs.append(header.run_id)
    expected = {r: (await pg_store.get_snapshot(tenant, r)) for r in runs}
    # Every stored snapshot rolled back to the middle of its log, as a crash might leave it.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for run_id in runs:
            log = await pg_store.fetch_events(tenant, run_id)
            middle = await _project_prefix(pg_store, tenant, run_id, len(log) // 2)
            conn.execute(
                sql.SQL("UPDATE {} SET snapshot = %s, snapshot_seq = %s WHERE run_id = %s")
                .format(sql.Identifier(pg_schema, "dvt_runs")),
                (middle, len(log) // 2, run_id))
    monkeypatch.setattr(admin, "RUNS_PER_PAGE", 2)

    report = await admin.catch_up(store_url(pg_dsn, pg_schema), tenant_id=tenant)

    assert report.runs == report.written == 5
    # Only the tails were read: half of each log (rounded up).
    logs = [len(await pg_store.fetch_events(tenant, r)) for r in runs]
    assert report.events == sum(n - n // 2 for n in logs)
    stored = _stored(pg_dsn, pg_schema, tenant)
    for run_id, snapshot in expected.items():
        assert snapshot is not None
        assert stored[run_id][0] == snapshot.model_dump_json()


async def _project_prefix(store: PostgresRunStateStore, tenant: str, run_id: str,
                          upto: int) -> str:
    header = await store.get_run(tenant, run_id)
    assert header is not None
    return project(header, (await store.fetch_events(tenant, run_id))[:upto]).model_dump_json()
