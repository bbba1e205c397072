"""Benchmarks of the PostgreSQL state store, each next to bare psycopg doing the same work.

Run: ``python benchmarks/bench_store.py`` (a durable local server is started for the run; pass
``--dsn`` to use another). ``--quick`` shrinks every count for a smoke run. The table printed at
the end is what docs/benchmarks.md records.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from benchmarks.store_baseline import baseline_scenarios
from benchmarks.store_scale import SCALE_PLANS, SEQ_SCAN_FAILURES
from benchmarks.store_scenarios import PLANS, dvt_scenarios
from benchmarks.store_table import Row, Scenario, render
from dvt_local.postgres import start_server
from dvt_statestore_pg.testing import create_schema, drop_schema, unique_schema_name

# A durable server: the baseline and dvt both pay a real commit (fsync on, synchronous commit).
BENCH_SETTINGS = {"max_connections": "200", "shared_buffers": "256MB"}


async def run(args: argparse.Namespace, dsn: str, server: str) -> str:
    """Every scenario, each in its own fresh schema."""
    rows: list[Row] = []
    scenarios: list[Scenario] = [baseline_scenarios]
    scenarios += dvt_scenarios()
    for scenario in scenarios:
        if args.only and scenario.__name__ not in args.only:
            continue
        schema = unique_schema_name("dvt_bench")
        create_schema(dsn, schema)
        print(f"... {scenario.__name__}", file=sys.stderr, flush=True)
        try:
            rows += await scenario(dsn, schema, args)
            for row in rows[-2:]:
                print(f"    {row}", file=sys.stderr, flush=True)
        finally:
            drop_schema(dsn, schema)
    text = render(rows, server)
    if PLANS:
        text += "\n\nlist_runs query plan:\n" + "\n".join(PLANS)
    if SCALE_PLANS:
        text += "\n\nhot query plans at scale:\n" + "\n\n".join(SCALE_PLANS)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--only", nargs="*", help="run only these scenario functions")
    parser.add_argument("--single", type=int, default=5000)
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--concurrent", type=int, default=4000)
    parser.add_argument("--storm", type=int, default=1_000_000)
    parser.add_argument("--lag", type=int, default=1000)
    parser.add_argument("--rebuild", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--list", type=int, default=2000)
    parser.add_argument("--filtered-runs", type=int, default=50_000)
    parser.add_argument("--scale-runs", type=int, default=1_000_000)
    parser.add_argument("--scale-events", type=int, default=10, help="events per run")
    parser.add_argument("--noop-steps", type=int, default=200)
    args = parser.parse_args(argv)
    if args.quick:
        args.single, args.batches, args.concurrent = 300, 30, 400
        args.storm, args.lag, args.rebuild, args.runs, args.list = 20_000, 100, 5000, 5000, 200
        args.filtered_runs, args.scale_runs, args.noop_steps = 5000, 20_000, 30
    return args


@contextmanager
def bench_server(dsn: str | None = None) -> Iterator[tuple[str, str]]:
    """The server of one benchmark run, its DSN and a line describing it: ``dsn`` when given,
    else a durable local PostgreSQL started for the run."""
    if dsn:
        yield dsn, "external (--dsn)"
        return
    pg = start_server(settings=BENCH_SETTINGS)
    try:
        with psycopg.connect(pg.dsn()) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        yield pg.dsn(), (
            f"PostgreSQL {version[0] if version else '?'} on 127.0.0.1,"
            " fsync on, synchronous_commit on"
        )
    finally:
        pg.destroy()


def main(argv: list[str] | None = None) -> None:
    """Start a server unless --dsn is given, run every scenario, print the table."""
    args = parse_args(argv)
    with bench_server(args.dsn) as (dsn, server):
        print(asyncio.run(run(args, dsn, server)))
    if SEQ_SCAN_FAILURES:
        sys.exit(f"sequential scan in the plan of: {', '.join(SEQ_SCAN_FAILURES)}")


if __name__ == "__main__":
    main()
