"""Benchmarks of cost metering (docs/cost.md, docs/benchmarks.md).

1. The pure fold: ``meter_run`` over synthetic runs of 10 steps, events per second.
2. A usage query on PostgreSQL: ``usage_rows`` + ``summarize`` for a tenant with N completed
   runs (3 costHint steps each, reference engine), p50/max of repeated queries. The budget
   check at a start is the same fold over the month.

Run: ``python benchmarks/bench_usage.py`` (a durable local server is started for the run;
``--dsn`` to use another). ``--quick`` shrinks the counts for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from benchmarks.bench_store import bench_server
from dvt_engine.builder import PlanBuilder
from dvt_engine.client import Client
from dvt_engine.cost import PriceTable, UsageWindow, meter_run, summarize, usage_rows
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.models.events import Event
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import create_schema, drop_schema, store_url, unique_schema_name

PLAN = (PlanBuilder("metered", "1").step("a", "noop", cost_units=1)
        .step("b", "noop", depends_on=["a"], cost_units=2)
        .step("c", "noop", depends_on=["b"]).build())


def synthetic_run(i: int, steps: int = 10) -> list[Event]:
    """A run of ``steps`` completed steps with an artifact each."""
    t0 = datetime(2026, 11, 3, tzinfo=UTC) + timedelta(minutes=i)
    common = {"tenant_id": "t", "project_id": "p", "environment_id": "e", "run_id": f"r{i}",
              "plan_id": "p", "plan_version": "1", "emitted_by": "engine"}
    n = 0

    def ev(etype: str, at: datetime, step: str | None = None, **payload: object) -> Event:
        nonlocal n
        n += 1
        key = hashlib.sha256(f"{i}/{n}".encode()).hexdigest()
        return Event(event_id=key[:32], event_type=etype, step_id=step, idempotency_key=key,
                     emitted_at=at, payload=payload, **common)

    events = [ev("RunStarted", t0, engine="reference")]
    for s in range(steps):
        events.append(ev("StepStarted", t0 + timedelta(seconds=s), f"s{s}", kind="noop"))
        events.append(ev("StepCompleted", t0 + timedelta(seconds=s, milliseconds=700),
                         f"s{s}", artifacts=[{"uri": "m://x", "kind": "f", "sizeBytes": 5000}]))
    return events


def fold_rate(runs: int) -> str:
    """Events per second of the pure fold."""
    corpus = [synthetic_run(i) for i in range(runs)]
    events = sum(len(r) for r in corpus)
    began = time.perf_counter()
    for run in corpus:
        meter_run(run, PriceTable())
    took = time.perf_counter() - began
    return (f"| pure fold | {runs} runs, {events} events | {1000 * took:.0f} ms total | "
            f"{events / took:,.0f} events/s |")


async def query(url: str, runs: int, reps: int) -> str:
    """Usage query latency for a tenant with ``runs`` completed runs."""
    store = await PostgresRunStateStore.open(url)
    client = Client(engine=ReferenceEngine(store), store=store, tenant="bench-usage")
    try:
        for start in range(0, runs, 20):
            handles = await asyncio.gather(*(client.start_run(PLAN, run_id=f"r{i}")
                                             for i in range(start, min(runs, start + 20))))
            await asyncio.gather(*(h.result(timeout=120) for h in handles))
        window = UsageWindow.parse(None, None, "plan")
        times = []
        answer: dict[str, object] = {}
        for _ in range(reps):
            began = time.perf_counter()
            answer = summarize(await usage_rows(store, "bench-usage", PriceTable(),
                                                before=window.end), window)
            times.append(time.perf_counter() - began)
        times.sort()
        return (f"| usage query, PostgreSQL | {runs} runs ({runs * 8} events), total "
                f"{answer['totalUnits']} units | p50 {1000 * times[len(times) // 2]:.0f} ms | "
                f"max {1000 * times[-1]:.0f} ms |")
    finally:
        await client.close()
        await store.close()


async def run(args: argparse.Namespace, dsn: str, server: str) -> str:
    """The fold, then each query size in a fresh schema."""
    lines = [f"server: {server}; load average {os.getloadavg()[0]:.1f}", "",
             "| what | size | time | rate |", "|---|---|---|---|", fold_rate(args.fold_runs)]
    for runs in args.runs:
        schema = unique_schema_name("dvt_bench_usage")
        create_schema(dsn, schema)
        try:
            lines.append(await query(store_url(dsn, schema), runs, args.reps))
        finally:
            drop_schema(dsn, schema)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Start a server unless --dsn is given, run the benchmarks, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--fold-runs", type=int, default=2000)
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.fold_runs, args.runs, args.reps = 100, [20], 3
    with bench_server(args.dsn) as (dsn, server):
        print(asyncio.run(run(args, dsn, server)))


if __name__ == "__main__":
    main()
