"""What ordering the tenant stream costs appends: the shipped design next to a global lock.

Two ways to give every event a place in one commit order, on the same schema and append path:

- ``xid horizon`` (shipped, migration 0003): each event records its transaction id; readers
  read only below the oldest transaction still in progress. Writers of different runs never
  wait for each other.
- ``global lock`` (eventsourcing's non-interleaving notification ids): the append function
  takes one transaction-scoped advisory lock before inserting, so positions are drawn and
  committed one transaction at a time. Here it is the shipped function with that one extra
  statement, so the difference is the lock alone.

For each, 8 writers on two store instances append signal decision records, each writer to its
own run (single appends, then batches of 10), while one tenant follower reads the stream; the
table shows append throughput and latency and the follower's lag behind each acknowledgement.
``--rounds`` repeats both variants, alternating, since a shared machine is noisy.

Run: ``python benchmarks/bench_stream.py`` (a durable local server is started; ``--dsn`` to use
another; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from benchmarks.bench_store import bench_server
from benchmarks.store_scenarios import decision_event
from benchmarks.store_table import Row, latency_row, percentile, render
from contract_tests.store_helpers import TenantCollector, make_header
from dvt_engine.eventlog import EventFactory
from dvt_engine.models.events import Event
from dvt_engine.ports import TENANT_LOG_START
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import (
    create_schema,
    drop_schema,
    store_url,
    unique_schema_name,
)

WRITERS = 8
RUNS = 8
GLOBAL_LOCK = "PERFORM pg_advisory_xact_lock(6476740301);\n    RETURN QUERY\n        WITH inserted"


def _global_lock_function() -> str:
    """Migration 0003's append function with a global lock taken right before the insert."""
    text = (
        resources.files("dvt_statestore_pg")
        .joinpath("migrations/0003_tenant_scope_and_stream.sql")
        .read_text("utf-8")
    )
    body = text[text.index("CREATE FUNCTION dvt_append_events(") :]
    marker = "RETURN QUERY\n        WITH inserted"
    assert body.count(marker) == 1
    return body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1).replace(
        marker, GLOBAL_LOCK
    )


async def _variant(dsn: str, schema: str, mode: str, args: argparse.Namespace) -> list[Row]:
    url = store_url(dsn, schema)
    async with await PostgresRunStateStore.open(url) as one:
        if mode == "global lock":
            with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
                conn.execute(
                    "SELECT set_config('search_path', %s, true)",
                    (sql.Identifier(schema).as_string(conn),),
                )
                conn.execute(_global_lock_function().encode())
        two = await PostgresRunStateStore.open(url)
        tenant = "bench-stream"
        steps = [f"s{i}" for i in range(10)]
        headers = [
            (await one.register_run(make_header(tenant_id=tenant, steps=steps)))[0]
            for _ in range(RUNS)
        ]
        factories = [EventFactory(h, emitted_by="operator") for h in headers]
        per_writer = args.events // WRITERS
        # Each writer has its own run: what is measured is what writers of different runs
        # cost each other, which is all the ordering can add.
        singles = [
            [decision_event(factories[i % RUNS], f"one-{i}-{n}") for n in range(per_writer)]
            for i in range(WRITERS)
        ]
        batches = [
            [
                [decision_event(factories[i % RUNS], f"b-{i}-{n}-{k}") for k in range(10)]
                for n in range(per_writer // 10)
            ]
            for i in range(WRITERS)
        ]
        acked: dict[str, float] = {}
        follower = TenantCollector(one.follow_tenant(tenant, after=TENANT_LOG_START))
        rows: list[Row] = []
        try:
            for label, work in (("single appends", singles), ("batches of 10", batches)):
                samples: list[float] = []

                async def writer(i: int, items: list[object]) -> None:
                    store = one if i % 2 else two
                    for item in items:
                        t0 = time.perf_counter()
                        if isinstance(item, Event):
                            await store.append(item)
                            done = [item]
                        else:
                            assert isinstance(item, list)
                            await store.append_batch(item)
                            done = item
                        now = time.perf_counter()
                        samples.append(now - t0)  # noqa: B023 - awaited in this iteration
                        for event in done:
                            acked[event.event_id] = now

                start = time.perf_counter()
                await asyncio.gather(*(writer(i, list(w)) for i, w in enumerate(work)))
                seconds = time.perf_counter() - start
                count = sum(len(b) if isinstance(b, list) else 1 for w in work for b in w)
                note = f"{WRITERS} writers, one run each"
                row = latency_row(label, mode, samples, seconds, note)
                row.count = count  # events, not calls
                rows.append(row)
            assert await follower.wait_for(len(acked), timeout=120), "the follower fell behind"
        finally:
            await follower.stop()
            await two.close()
        arrived = {
            item.event.event_id: t for item, t in zip(follower.items, follower.times, strict=True)
        }
        lags = [arrived[k] - acked[k] for k in acked]
        rows.append(
            Row(
                "follower lag after the ack",
                mode,
                len(lags),
                0.0,
                percentile(lags, 0.5) * 1000,
                percentile(lags, 0.99) * 1000,
                "one tenant follower",
            )
        )
        return rows


async def run(args: argparse.Namespace, dsn: str, server: str) -> str:
    """Both variants (``--rounds`` times, alternating), each in a fresh schema."""
    rows: list[Row] = []
    for mode in ("xid horizon", "global lock") * args.rounds:
        schema = unique_schema_name("dvt_bench_stream")
        create_schema(dsn, schema)
        try:
            print(f"... {mode}", file=sys.stderr, flush=True)
            rows += await _variant(dsn, schema, mode, args)
        finally:
            drop_schema(dsn, schema)
    return render(rows, server)


def main(argv: list[str] | None = None) -> None:
    """Start a durable server unless --dsn is given, run both variants, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--events", type=int, default=4000, help="events per scenario")
    parser.add_argument("--rounds", type=int, default=1, help="repeat both variants")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.events = 400
    with bench_server(args.dsn) as (dsn, server):
        print(asyncio.run(run(args, dsn, server)))


if __name__ == "__main__":
    main()
