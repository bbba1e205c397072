"""The ``sql`` step kind next to the same query through bare psycopg: the per-step overhead.

Run: ``python benchmarks/bench_steps.py`` (a local PostgreSQL is started for the run; pass
``--dsn`` to use another). ``--quick`` shrinks the counts for a smoke run. Every figure is the
mean wall time per query over a chain of sequential steps on the reference engine and the
memory store, so it includes scheduling, the step's events and its connection. The baselines:
bare psycopg opening a connection per query (what a step does) and on one open connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from dvt_engine import Client, PlanBuilder, ReferenceSettings
from dvt_engine.connections import Connection, ConnectionSettings
from dvt_engine.plugins import open_engine
from dvt_engine.steps import builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore
from dvt_local.postgres import start_server
from dvt_steps.sql import SqlStepHandler

QUERY = "select g, 'row ' || g from generate_series(1, %s) g"
ROWS = 50


async def bare_connect_each(dsn: str, n: int) -> float:
    """Seconds for ``n`` queries, each on a new connection (what one sql step does)."""
    began = time.perf_counter()
    for _ in range(n):
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await (await conn.execute(QUERY, [ROWS])).fetchall()
    return time.perf_counter() - began


async def bare_one_connection(dsn: str, n: int) -> float:
    """Seconds for ``n`` queries on one open connection."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        began = time.perf_counter()
        for _ in range(n):
            await (await conn.execute(QUERY, [ROWS])).fetchall()
        return time.perf_counter() - began


async def dvt_chain(dsn: str, n: int, kind: str) -> float:
    """Seconds for a plan of ``n`` chained steps of ``kind`` (sql or noop), start to result."""
    registry = builtin_registry()
    registry.register("sql", SqlStepHandler(
        connections=ConnectionSettings(connections={"pg": Connection(url=dsn)})))
    store = MemoryRunStateStore()
    engine = open_engine(ReferenceSettings(), store=store, registry=registry,
                         artifacts=MemoryArtifactStore())
    builder = PlanBuilder("bench", "1")
    params = {"connection": "pg", "statement": QUERY, "parameters": [ROWS]} \
        if kind == "sql" else {}
    for i in range(n):
        builder.step(f"s{i}", kind, params=params, depends_on=[f"s{i - 1}"] if i else [])
    plan = builder.build()
    async with Client(engine=engine, store=store, tenant="bench", owns_store=True) as client:
        began = time.perf_counter()
        handle = await client.start_run(plan, run_id=f"b-{uuid.uuid4().hex[:8]}")
        snapshot = await handle.result(timeout=600)
        took = time.perf_counter() - began
    assert snapshot.status == "COMPLETED", snapshot.status
    return took


async def measure(name: str, fn: Callable[[str, int], Awaitable[float]], dsn: str, n: int,
                  repeats: int) -> tuple[str, float, float]:
    """Median and spread (ms per query) of ``repeats`` runs of ``fn``."""
    per = [1000 * await fn(dsn, n) / n for _ in range(repeats)]
    return name, statistics.median(per), max(per) - min(per)


async def run(dsn: str, n: int, repeats: int) -> list[tuple[str, float, float]]:
    """Every measurement, warmed up once."""
    await bare_connect_each(dsn, 5)
    await dvt_chain(dsn, 5, "sql")
    rows = [await measure("bare psycopg, one connection", bare_one_connection, dsn, n, repeats),
            await measure("bare psycopg, connect per query", bare_connect_each, dsn, n, repeats)]
    rows.append(await measure("dvt noop step (engine + events)",
                              lambda d, k: dvt_chain(d, k, "noop"), dsn, n, repeats))
    rows.append(await measure("dvt sql step", lambda d, k: dvt_chain(d, k, "sql"),
                              dsn, n, repeats))
    return rows


def render(rows: list[tuple[str, float, float]], n: int, server: str) -> str:
    """The markdown table docs/benchmarks.md records."""
    by = {name: ms for name, ms, _ in rows}
    lines = [f"{n} sequential queries of {ROWS} rows each; {server}; "
             f"Python {platform.python_version()}",
             "", "| what | ms per query (median) | spread | unit |", "|---|---|---|---|"]
    lines += [f"| {name} | {ms:.2f} | {spread:.2f} | ms |" for name, ms, spread in rows]
    overhead = by["dvt sql step"] - by["bare psycopg, connect per query"]
    lines.append(f"| sql step overhead over connect-per-query | {overhead:.2f} | - | ms |")
    return "\n".join(lines)


@contextmanager
def bench_server(dsn: str | None) -> Iterator[tuple[str, str]]:
    """``dsn`` when given, else a local PostgreSQL for the run."""
    if dsn:
        yield dsn, "external server"
        return
    pg = start_server()
    try:
        yield pg.dsn(), "local PostgreSQL on 127.0.0.1"
    finally:
        pg.destroy()


def main(argv: list[str] | None = None) -> None:
    """Start a server unless --dsn is given, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    n, repeats = (20, 2) if args.quick else (args.steps, args.repeats)
    with bench_server(args.dsn) as (dsn, server):
        print(render(asyncio.run(run(dsn, n, repeats)), n, server))


if __name__ == "__main__":
    main()
