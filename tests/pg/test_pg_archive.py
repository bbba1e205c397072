"""The cold archive on real PostgreSQL: reads, stream and rebuild identical across tiers."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from archive_helpers import drain_outbox, hot_counts, parquet_rows, read_all, seed_runs

from contract_tests.driver import signal_request
from contract_tests.scenarios import execute_scenario, get_scenario, scenario_ids
from dvt_archive.archiver import archive_runs
from dvt_archive.export import export_events
from dvt_archive.rebuild import rebuild_from_cold
from dvt_engine.errors import ArchiveBusy
from dvt_engine.models.run import RunStatus
from dvt_engine.plugins import open_engine
from dvt_engine.projector import project
from dvt_statestore_pg import admin
from dvt_statestore_pg.store import PostgresRunStateStore


async def test_every_golden_scenario_reads_identically_after_archiving(
    pg_store: PostgresRunStateStore, pg_store_url: str, pg_dsn: str, pg_schema: str,
    tmp_path: Path,
) -> None:
    runs = await seed_runs(pg_store, scenario_ids(), "golden")
    assert len(runs) > 20
    statuses = {k: (await pg_store.get_snapshot(*k)).status for k in runs}  # type: ignore[union-attr]
    # A stored snapshot may lag its log (big plans store one every n-th append; readers apply
    # the tail): one that lags here must be brought to the last runSeq by the archiver.
    lagging = max(runs, key=lambda k: (statuses[k].is_terminal, k == runs[0]))
    log = await pg_store.fetch_events(*lagging)
    header = await pg_store.get_run(*lagging)
    assert header is not None
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(f'UPDATE "{pg_schema}".dvt_runs SET snapshot = %s::json, snapshot_seq = %s'
                     " WHERE tenant_id = %s AND run_id = %s",
                     (project(header, log[: len(log) // 2]).model_dump_json(), len(log) // 2,
                      *lagging))
    # Fresh stores read from here on: none holds a cached state from before the change.
    reader = await PostgresRunStateStore.open(pg_store_url)
    try:
        await _golden_checks(reader, pg_store_url, pg_dsn, pg_schema, tmp_path, runs, statuses)
    finally:
        await reader.close()


async def _golden_checks(
    pg_store: PostgresRunStateStore, pg_store_url: str, pg_dsn: str, pg_schema: str,
    tmp_path: Path, runs: list[tuple[str, str]], statuses: dict[tuple[str, str], RunStatus],
) -> None:
    before = await read_all(pg_store, runs)
    await drain_outbox(pg_store)

    dry = await archive_runs(pg_store_url, str(tmp_path), older_than=timedelta(0), dry_run=True)
    assert dry.runs > 0
    assert dry.batches == 0
    assert sum(hot_counts(pg_dsn, pg_schema, runs).values()) == sum(
        len(r.events) for r in before.values())

    report = await archive_runs(pg_store_url, str(tmp_path), older_than=timedelta(0),
                                batch_runs=7)
    terminal = [k for k in runs if statuses[k].value in ("COMPLETED", "FAILED", "CANCELLED")]
    assert report.runs == len(terminal) == dry.runs
    assert report.events == sum(len(before[k].events) for k in terminal)
    assert report.batches == -(-len(terminal) // 7)
    counts = hot_counts(pg_dsn, pg_schema, runs)
    assert all(counts[k] == 0 for k in terminal)
    assert sorted(parquet_rows(tmp_path)) == sorted(
        (t, r, seq) for (t, r) in terminal for seq in range(1, len(before[(t, r)].events) + 1))

    after = await read_all(pg_store, runs)
    assert after == before
    for tenant, run in terminal:
        assert await pg_store.get_run(tenant, run) is not None
        listed = await pg_store.list_runs(tenant, limit=1000)
        assert run in {summary.run_id for summary in listed}

    # A plain rebuild leaves archived runs alone; --from-cold recomputes them, unchanged.
    plain = await admin.rebuild(pg_store_url)
    assert sorted(plain.archived) == sorted(r for _, r in terminal)
    cold = await rebuild_from_cold(pg_store_url)
    assert cold.archived == []
    assert cold.differed == []
    assert cold.raced == []
    assert cold.runs >= len(runs)
    assert await read_all(pg_store, runs) == before


async def test_events_after_archiving_stay_hot_and_are_archived_again(
    pg_store: PostgresRunStateStore, pg_store_url: str, pg_dsn: str, pg_schema: str,
    tmp_path: Path,
) -> None:
    engine = open_engine("reference", store=pg_store)
    try:
        outcome = await execute_scenario(get_scenario("one-step"), engine, pg_store,
                                         run_id="again-one-step")
        key = (outcome.tenant_id, outcome.run_id)
        await drain_outbox(pg_store)
        first = await archive_runs(pg_store_url, str(tmp_path), older_than=timedelta(0))
        assert first.runs == 1
        archived = len(await pg_store.fetch_events(*key))
        assert hot_counts(pg_dsn, pg_schema, [key])[key] == 0
        # A signal after the end is decided (rejected) and recorded after the archived events.
        assert outcome.run_ref is not None
        await engine.signal(outcome.run_ref, signal_request(
            {"signalId": "late-pause", "type": "PAUSE"}, *key))
    finally:
        await engine.close()
    assert hot_counts(pg_dsn, pg_schema, [key])[key] == 1
    before = await read_all(pg_store, [key])
    assert len(before[key].events) == archived + 1
    window = await pg_store.fetch_events(*key, after_seq=archived - 1, limit=2)
    assert [e.run_seq for e in window] == [archived, archived + 1]

    await drain_outbox(pg_store)
    second = await archive_runs(pg_store_url, str(tmp_path), older_than=timedelta(0))
    assert second.runs == 1
    assert second.events == 1
    assert hot_counts(pg_dsn, pg_schema, [key])[key] == 0
    assert await read_all(pg_store, [key]) == before
    cold = await rebuild_from_cold(pg_store_url)
    assert cold.differed == []
    assert await read_all(pg_store, [key]) == before


async def test_export_of_a_period_equals_the_events_of_that_period(
    pg_store: PostgresRunStateStore, pg_store_url: str, pg_dsn: str, pg_schema: str,
    tmp_path: Path,
) -> None:
    runs = await seed_runs(pg_store, ["linear-chain", "diamond", "one-step"], "export")
    tenant = runs[0][0]
    events = [e for t, r in runs if t == tenant for e in await pg_store.fetch_events(t, r)]
    times = sorted(e.persisted_at for e in events if e.persisted_at is not None)
    start, end = times[len(times) // 3], times[-1] + timedelta(microseconds=1)
    expected = sorted((e for e in events if e.persisted_at and start <= e.persisted_at < end),
                      key=lambda e: (e.persisted_at, e.run_id, e.run_seq))
    await drain_outbox(pg_store)
    # The last run (the latest events) goes cold, the others stay hot: both tiers are read.
    cold_run = runs[-1]
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(f'UPDATE "{pg_schema}".dvt_runs SET updated_at = updated_at - interval'
                     " '2 days' WHERE tenant_id = %s AND run_id = %s", cold_run)
    moved = await archive_runs(pg_store_url, str(tmp_path / "cold"), older_than=timedelta(days=1),
                               tenant_id=tenant)
    assert moved.runs == 1
    report = await export_events(pg_store_url, tenant, start, end, str(tmp_path / "out"))
    lines = (tmp_path / "out" / "events.jsonl").read_text().splitlines()
    assert lines == [e.model_dump_json(exclude_none=True) for e in expected]
    assert report.rows == len(expected)
    assert report.cold_rows == sum(1 for e in expected if (e.tenant_id, e.run_id) == cold_run)
    assert report.cold_rows > 0
    assert report.hot_rows > 0
    data = json.loads((tmp_path / "out" / "manifest.json").read_text())
    digest = hashlib.sha256((tmp_path / "out" / "events.jsonl").read_bytes()).hexdigest()
    assert data["files"] == [{"path": "events.jsonl", "rows": len(expected),
                              "bytes": (tmp_path / "out" / "events.jsonl").stat().st_size,
                              "sha256": digest}]
    parquet = await export_events(pg_store_url, tenant, start, end, str(tmp_path / "pq"),
                                  fmt="parquet")
    assert parquet.rows == len(expected)
    assert sorted(parquet_rows(tmp_path / "pq")) == sorted(
        (e.tenant_id, e.run_id, e.run_seq) for e in expected)


@pytest.mark.parametrize("older_than", [timedelta(days=90)])
async def test_recent_runs_stay_hot(
    pg_store: PostgresRunStateStore, pg_store_url: str, tmp_path: Path, older_than: timedelta,
) -> None:
    runs = await seed_runs(pg_store, ["one-step"], "recent")
    await drain_outbox(pg_store)
    report = await archive_runs(pg_store_url, str(tmp_path), older_than=older_than)
    assert report.runs == 0
    assert parquet_rows(tmp_path) == []
    assert len(await pg_store.fetch_events(*runs[0])) > 0


async def test_a_second_archiver_is_refused_while_one_works(
    pg_store_url: str, pg_dsn: str, pg_schema: str, tmp_path: Path,
) -> None:
    holder = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    async with holder:
        await holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 7420))",
                             (f"{pg_schema}|archiver",))
        with pytest.raises(ArchiveBusy):
            await archive_runs(pg_store_url, str(tmp_path), older_than=timedelta(0))
        with pytest.raises(ArchiveBusy):
            await archive_runs(pg_store_url, str(tmp_path), older_than=timedelta(0),
                               lock_wait=0.2)
    # The holder's session ended: its lock went with it.
    report = await archive_runs(pg_store_url, str(tmp_path), older_than=timedelta(0),
                                lock_wait=30)
    assert report.cutoff
