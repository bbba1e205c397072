"""A run's status by id: dvt's get_run and get_snapshot next to the bare primary-key SELECT."""

from __future__ import annotations

import argparse
import time
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.store_table import Row, latency_row
from contract_tests.store_suite import happy_path, make_header
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import store_url

RUNS = 200


async def seed_lookup_runs(store: PostgresRunStateStore) -> list[str]:
    """RUNS running runs of tenant "lookup", of a 20-step plan (41 events each); their ids."""
    ids = []
    for _ in range(RUNS):
        header, _ = await store.register_run(
            make_header(tenant_id="lookup", steps=[f"s{i}" for i in range(20)])
        )
        await store.append_batch(happy_path(header)[:-1])
        ids.append(header.run_id)
    # Statistics, as autovacuum would gather them on a live store: a statement the store
    # prepared on the young table (every index costs the same without them) keeps a generic
    # plan that walks the tenant's runs on another index, until ANALYZE replaces it.
    schema = store.config.schema
    analyze = sql.SQL("ANALYZE {}, {}").format(
        sql.Identifier(schema, "dvt_runs"), sql.Identifier(schema, "dvt_events"))

    async def work(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(analyze)

    await store._run(work)
    return ids


async def status_by_id(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """args.list lookups over RUNS running runs of a 20-step plan (41 events each)."""
    rows: list[Row] = []
    async with await PostgresRunStateStore.open(store_url(dsn, schema)) as store:
        ids = await seed_lookup_runs(store)
        raw: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
            dsn, autocommit=True
        )
        query = sql.SQL(
            "SELECT status, last_seq FROM {} WHERE run_id = %s AND tenant_id = %s"
        ).format(sql.Identifier(schema, "dvt_runs"))
        samples: list[float] = []
        start = time.perf_counter()
        for i in range(args.list):
            t0 = time.perf_counter()
            await (await raw.execute(query, (ids[i % RUNS], "lookup"))).fetchone()
            samples.append(time.perf_counter() - t0)
        rows.append(latency_row("status by id", "bare SELECT by primary key", samples,
                                time.perf_counter() - start, "status and last runSeq"))
        await raw.close()
        for subject, lookup in (
            ("dvt get_run", store.get_run),
            ("dvt get_snapshot", store.get_snapshot),
        ):
            samples = []
            start = time.perf_counter()
            for i in range(args.list):
                t0 = time.perf_counter()
                assert await lookup("lookup", ids[i % RUNS]) is not None
                samples.append(time.perf_counter() - t0)
            rows.append(latency_row("status by id", subject, samples,
                                    time.perf_counter() - start, "header / 20-step snapshot"))
    return rows
