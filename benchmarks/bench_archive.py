"""The cold archive: archiving, reading and rebuilding 100,000 events, next to a bare baseline.

Seeds ``--events`` events (default 100,000) as copies of one real run of the ``parallel-50``
golden scenario (driven once on the reference engine, then cloned in SQL under new run ids, so
every copy is a genuine log the projector folds), then measures:

- ``archive``: one ``archive_runs`` pass moving every run to Parquet (zstd) on a local
  directory, verification by read-back included;
- ``rebuild --from-cold``: ``rebuild_from_cold``, every snapshot recomputed from the Parquet
  files (and the empty hot log), written back, checksums compared;
- ``store rebuild`` of the same runs before archiving (all hot), for comparison;
- the bare baseline: pyarrow reading the same files and a fold without dvt (``json.loads`` of
  each envelope and a dict of step states per run), the floor any rebuild pays;
- one run's read (``fetch_events``), hot before archiving and cold after, p50 over ``--reads``
  runs (the cold one decodes its batch file once per reader cache miss).

Run: ``python benchmarks/bench_archive.py`` (``--quick`` for 10,000 events, ``--dsn`` for
another server, ``--json``). It starts a durable PostgreSQL from the pinned wheel like
bench_store.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
from bench_store import bench_server

from contract_tests.scenarios import execute_scenario, get_scenario
from dvt_archive.archiver import archive_runs
from dvt_archive.rebuild import rebuild_from_cold
from dvt_engine.plugins import open_engine
from dvt_statestore_pg import admin
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import create_schema, drop_schema, store_url

TEMPLATE = "parallel-50"


async def seed(url: str, dsn: str, schema: str, events: int) -> tuple[int, int]:
    """Drive the template once and clone it until ``events`` events exist: (runs, events)."""
    store = await PostgresRunStateStore.open(url)
    engine = open_engine("reference", store=store)
    try:
        outcome = await execute_scenario(get_scenario(TEMPLATE), engine, store, run_id="tmpl")
    finally:
        await engine.close()
        await store.close()
    tenant = outcome.tenant_id
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".dvt_events WHERE run_id = %s',
                           ("tmpl",)).fetchone()
        per_run = int(row[0]) if row else 0
        copies = max(1, events // per_run - 1)
        old = '"runId":"tmpl"'
        conn.execute(
            f'INSERT INTO "{schema}".dvt_runs (run_id, tenant_id, project_id, environment_id,'
            " plan_id, plan_version, engine, run_request_key, header, status, substatus,"
            " last_seq, snapshot, snapshot_seq, created_at, updated_at, labels)"
            " SELECT 'r' || g, tenant_id, project_id, environment_id, plan_id, plan_version,"
            " engine, run_request_key || '-' || g,"
            " replace(header::text, %(old)s, '\"runId\":\"r' || g || '\"')::json, status,"
            " substatus, last_seq,"
            " replace(snapshot::text, %(old)s, '\"runId\":\"r' || g || '\"')::json,"
            " snapshot_seq, created_at, updated_at, labels"
            f' FROM "{schema}".dvt_runs, generate_series(1, %(n)s) g'
            " WHERE tenant_id = %(tenant)s AND run_id = 'tmpl'",
            {"old": old, "n": copies, "tenant": tenant})
        conn.execute(
            f'INSERT INTO "{schema}".dvt_events (run_id, run_seq, idempotency_key, event_id,'
            " event_type, tenant_id, project_id, environment_id, step_id, logical_attempt_id,"
            " engine_attempt_id, emitted_at, persisted_at, envelope, content_hash)"
            " SELECT 'r' || g, run_seq, idempotency_key, event_id || '-' || g, event_type,"
            " tenant_id, project_id, environment_id, step_id, logical_attempt_id,"
            " engine_attempt_id, emitted_at, persisted_at,"
            " replace(envelope::text, %(old)s, '\"runId\":\"r' || g || '\"')::json,"
            f' content_hash FROM "{schema}".dvt_events, generate_series(1, %(n)s) g'
            " WHERE tenant_id = %(tenant)s AND run_id = 'tmpl'",
            {"old": old, "n": copies, "tenant": tenant})
        conn.execute(f'DELETE FROM "{schema}".dvt_outbox')
        conn.execute(f'ANALYZE "{schema}".dvt_events')
        conn.execute(f'ANALYZE "{schema}".dvt_runs')
        row = conn.execute(f'SELECT count(*) FROM "{schema}".dvt_events').fetchone()
    return copies + 1, int(row[0]) if row else 0


def bare_baseline(root: Path) -> tuple[float, int, int]:
    """pyarrow reads every file and folds each run's events without dvt: (s, runs, events)."""
    started = time.perf_counter()
    states: dict[tuple[str, str], dict[str, Any]] = {}
    count = 0
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path, columns=["tenant_id", "run_id", "run_seq", "envelope"])
        for tenant, run, _seq, envelope in zip(*(c.to_pylist() for c in table.columns),
                                               strict=True):
            event = json.loads(envelope)
            state = states.setdefault((tenant, run), {"steps": {}, "status": None, "last": 0})
            state["last"] = _seq
            kind = event.get("eventType", "")
            if event.get("stepId"):
                state["steps"][event["stepId"]] = kind
            elif kind.startswith("Run"):
                state["status"] = kind
            count += 1
    return time.perf_counter() - started, len(states), count


async def read_p50(url: str, runs: list[str], tenant: str) -> float:
    """Median ms of one run's ``fetch_events`` with a fresh store (no warm reader cache)."""
    store = await PostgresRunStateStore.open(url)
    timings = []
    try:
        for run in runs:
            started = time.perf_counter()
            await store.fetch_events(tenant, run)
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        await store.close()
    return statistics.median(timings)


async def run(args: argparse.Namespace, dsn: str, server: str) -> dict[str, Any]:
    """Seed, measure, and return the results."""
    schema = f"bench_archive_{os.getpid()}"
    create_schema(dsn, schema)
    url = store_url(dsn, schema)
    results: dict[str, Any] = {"server": server}
    try:
        runs, events = await seed(url, dsn, schema, args.events)
        results.update(runs=runs, events=events)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT pg_total_relation_size(%s)",
                               (f'"{schema}".dvt_events',)).fetchone()
            results["hot_bytes"] = int(row[0]) if row else 0
            tenant = conn.execute(f'SELECT tenant_id FROM "{schema}".dvt_runs LIMIT 1'
                                  ).fetchone()[0]  # type: ignore[index]
        sample = [f"r{i}" for i in range(1, min(args.reads, runs - 1) + 1)]
        results["hot_read_p50_ms"] = await read_p50(url, sample, tenant)
        started = time.perf_counter()
        hot_rebuild = await admin.rebuild(url)
        results["hot_rebuild_s"] = time.perf_counter() - started
        results["hot_rebuild_events"] = hot_rebuild.events
        with tempfile.TemporaryDirectory(prefix="dvt-bench-archive-") as tmp:
            root = Path(tmp)
            started = time.perf_counter()
            report = await archive_runs(url, str(root), older_than=timedelta(0))
            results["archive_s"] = time.perf_counter() - started
            results["archived_events"] = report.events
            results["parquet_bytes"] = report.bytes
            results["files"] = report.files
            results["cold_read_p50_ms"] = await read_p50(url, sample, tenant)
            started = time.perf_counter()
            rebuilt = await rebuild_from_cold(url)
            results["rebuild_s"] = time.perf_counter() - started
            results["rebuild_events"] = rebuilt.events
            results["rebuild_differed"] = len(rebuilt.differed)
            bare_s, bare_runs, bare_events = await asyncio.to_thread(bare_baseline, root)
            results.update(bare_s=bare_s, bare_runs=bare_runs, bare_events=bare_events)
    finally:
        drop_schema(dsn, schema)
    return results


def table(r: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    rate = r["events"] / r["archive_s"]
    lines = [
        f"{r['events']:,} events in {r['runs']:,} runs ({TEMPLATE} copies); {r['server']}",
        "",
        "| measurement | seconds | events/s | note |",
        "|---|---:|---:|---|",
        f"| archive pass (write, verify, delete) | {r['archive_s']:.2f} | {rate:,.0f} |"
        f" {r['files']} file(s), {r['parquet_bytes']:,} B Parquet vs {r['hot_bytes']:,} B hot |",
        f"| dvt `store rebuild --from-cold` | {r['rebuild_s']:.2f} |"
        f" {r['rebuild_events'] / r['rebuild_s']:,.0f} | {r['rebuild_differed']} differed |",
        f"| dvt `store rebuild` before archiving (hot only) | {r['hot_rebuild_s']:.2f} |"
        f" {r['hot_rebuild_events'] / r['hot_rebuild_s']:,.0f} | the same runs from PostgreSQL |",
        f"| bare pyarrow read + fold | {r['bare_s']:.2f} | {r['bare_events'] / r['bare_s']:,.0f}"
        f" | {r['bare_runs']:,} runs, no dvt |",
        "",
        f"one run's fetch_events p50: hot {r['hot_read_p50_ms']:.2f} ms,"
        f" cold {r['cold_read_p50_ms']:.2f} ms",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Start a server unless --dsn is given, run, print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.reads = 10_000, 20
    with bench_server(args.dsn) as (dsn, server):
        results = asyncio.run(run(args, dsn, server))
    print(json.dumps(results, indent=1) if args.json else table(results))


if __name__ == "__main__":
    main()
