"""Noisy neighbour: tenant B's starts while tenant A sends ten times its start rate.

One PostgreSQL schema, limits on (PostgreSQL admission), reference engine, one-step plans.
Tenant B starts runs at a steady rate in this process; in the "flood" phases a second process
(tenant A, its own pools and engine, as another ``dvt serve`` would be) sends ten times A's
``runStartsPerMinute``, so most of A's starts are refused with RATE_LIMITED and the rest run.
A second condition has A send exactly its rate (the work A is allowed), so the cost of the
excess is told apart from the cost of A's admitted runs; a fourth floods with the refusing
process's memory of refusals switched off (every refusal asks the store, as before that
memory existed). Phases alternate (alone, A at its limit, A flooding, ...) so a drift of the
shared machine's load falls on every condition alike. Per condition: B's start latency
p50/p99 (``start_run``), B's throughput (runs completed per second of the phase) and what A
sent, got admitted, got refused and failed to start.

Run: ``python benchmarks/bench_noisy_neighbour.py`` (a durable local server is started for
the run; ``--dsn`` to use another). ``--quick`` shrinks the phases for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import dvt_engine.admission as admission_module
from benchmarks.bench_store import bench_server
from dvt_engine.admission import LimitsPatch
from dvt_engine.builder import PlanBuilder
from dvt_engine.client import Client
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.errors import DvtError, RateLimited
from dvt_statestore_pg.admission import PostgresAdmissionStore
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import create_schema, drop_schema, store_url, unique_schema_name

QUICK = PlanBuilder("quick", "1").step("a", "noop").build()


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values`` in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def steady(client: Client, rate: float, seconds: float, tag: str
                 ) -> tuple[list[float], int, float]:
    """Start ``rate`` runs a second for ``seconds`` (open loop, each on its own schedule);
    start latencies, runs completed, and the seconds from the first start to the last end."""
    plan_ref = await client.store_plan(QUICK)
    latencies: list[float] = []
    ended: list[float] = []

    async def one(i: int) -> None:
        began = time.perf_counter()
        handle = await client.start_run(plan_ref, run_id=f"{tag}-{i}")
        latencies.append(time.perf_counter() - began)
        await handle.result(timeout=120)
        ended.append(time.perf_counter())

    first = time.perf_counter()
    n = int(rate * seconds)
    async with asyncio.TaskGroup() as group:
        for i in range(n):
            await asyncio.sleep(max(0.0, first + i / rate - time.perf_counter()))
            group.create_task(one(i))
    return latencies, len(ended), max(ended) - first


async def flood(url: str, tenant: str, rate: float, seconds: float) -> dict[str, int]:
    """Tenant A's side: ``rate`` starts a second for ``seconds``, refusals counted."""
    store = await PostgresRunStateStore.open(url)
    admission = await PostgresAdmissionStore.open(url, pool_max=8)
    engine = ReferenceEngine(store)
    client = Client(engine=engine, store=store, tenant=tenant, admission=admission)
    plan_ref = await client.store_plan(QUICK)
    counts = {"sent": 0, "admitted": 0, "refused": 0, "failed": 0}

    async def one(run_id: str) -> None:
        counts["sent"] += 1
        try:
            await client.start_run(plan_ref, run_id=run_id)
            counts["admitted"] += 1
        except RateLimited:
            counts["refused"] += 1
        except DvtError:  # e.g. A's own pool exhausted: A's problem, counted, not B's
            counts["failed"] += 1

    suffix = uuid.uuid4().hex[:6]
    print("ready", flush=True)
    first = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, first + i / rate - time.perf_counter()))
            group.create_task(one(f"a-{suffix}-{i}"))
    await engine.wait_idle()
    await client.close()
    await engine.close()
    await admission.close()
    await store.close()
    return counts


async def empty_bucket(admission: PostgresAdmissionStore, tenant: str) -> None:
    """A's start bucket with no token left, as after a minute of sending over its rate (a
    bucket starts full: A would otherwise spend a minute's worth of starts first)."""
    async def work(conn: Any) -> None:
        await conn.execute(admission._q(
            "INSERT INTO {s}.dvt_admission_buckets (tenant_id, kind, tokens, updated_at)"
            " VALUES (%s, 'start', 0, clock_timestamp()) ON CONFLICT (tenant_id, kind)"
            " DO UPDATE SET tokens = 0, updated_at = clock_timestamp()"), (tenant,))

    await admission._run(work)


def start_flood(url: str, tenant: str, rate: float, seconds: float, *, remember: bool
                ) -> subprocess.Popen[str]:
    """Tenant A's process, running once it said ``ready``."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--flood", url, "--tenant", tenant, "--rate", str(rate),
         "--seconds", str(seconds), *(() if remember else ("--forget",))],
        stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


async def run(args: argparse.Namespace, dsn: str, server: str) -> str:
    """Alternate B alone and B next to A's flood; one table row per condition."""
    schema = unique_schema_name("dvt_bench_noisy")
    create_schema(dsn, schema)
    url = store_url(dsn, schema)
    store = await PostgresRunStateStore.open(url)
    admission = await PostgresAdmissionStore.open(url, pool_max=8)
    engine = ReferenceEngine(store)
    suffix = uuid.uuid4().hex[:6]
    a, b = f"a-{suffix}", f"b-{suffix}"
    await admission.set_limits(a, LimitsPatch.parse(
        {"runStartsPerMinute": args.a_limit, "maxActiveRuns": 1000}))
    await admission.set_limits(b, LimitsPatch.parse(
        {"runStartsPerMinute": 1_000_000, "maxActiveRuns": 1000}))
    client = Client(engine=engine, store=store, tenant=b, admission=admission)
    conditions = ("alone", "A at its limit", "A at 10x its limit",
                  "A at 10x, refusals not remembered")
    results: dict[str, dict[str, list[float]]] = {
        c: {"lat": [], "done": [], "span": []} for c in conditions}
    floods: dict[str, list[dict[str, int]]] = {c: [] for c in conditions}
    a_rate = {"A at its limit": args.a_limit / 60, "A at 10x its limit": 10 * args.a_limit / 60,
              "A at 10x, refusals not remembered": 10 * args.a_limit / 60}
    load = []
    try:
        await steady(client, args.b_rate, 2, "warm")
        for phase in range(len(conditions) * args.rounds):
            condition = conditions[phase % len(conditions)]
            process = None
            if condition in a_rate:
                await empty_bucket(admission, a)
                process = start_flood(url, a, a_rate[condition], args.seconds,
                                      remember="not remembered" not in condition)
            load.append(os.getloadavg()[0])
            lat, done, span = await steady(client, args.b_rate, args.seconds, f"b{phase}")
            results[condition]["lat"] += lat
            results[condition]["done"].append(done)
            results[condition]["span"].append(span)
            if process is not None:
                out, _ = await asyncio.to_thread(process.communicate)
                floods[condition].append(json.loads(out.strip().splitlines()[-1]))
        await engine.wait_idle()
    finally:
        await engine.close()
        await admission.close()
        await store.close()
        drop_schema(dsn, schema)
    lines = [f"server: {server}; load average {min(load):.1f}-{max(load):.1f}; "
             f"A's limit {args.a_limit}/min, A sends {10 * args.a_limit}/min; "
             f"B {args.b_rate * 60:.0f}/min; {args.rounds} rounds of {args.seconds:.0f} s", "",
             "| B next to | starts | start p50 (ms) | start p99 (ms) | runs/s | A sent/admitted/"
             "refused/failed |", "|---|---|---|---|---|---|"]
    for condition in conditions:
        r = results[condition]
        rate = _rate(r)
        got = floods[condition]
        a_part = "/".join(str(sum(f[k] for f in got))
                          for k in ("sent", "admitted", "refused", "failed")) if got else "-"
        lines.append(f"| {condition} | {len(r['lat'])} | {pct(r['lat'], .5):.1f} | "
                     f"{pct(r['lat'], .99):.1f} | {rate:.2f} | {a_part} |")
    lines.append("")
    for base, other in (("alone", "A at 10x its limit"), ("A at its limit", "A at 10x its limit"),
                        ("A at its limit", "A at 10x, refusals not remembered")):
        p99 = 100 * (pct(results[other]["lat"], .99) / pct(results[base]["lat"], .99) - 1)
        throughput = 100 * (_rate(results[other]) / _rate(results[base]) - 1)
        lines.append(f"B {other} against B {base}: start p99 {p99:+.1f} %, "
                     f"throughput {throughput:+.1f} %")
    return "\n".join(lines)


def _rate(r: dict[str, list[float]]) -> float:
    return sum(r["done"]) / sum(r["span"])


def main(argv: list[str] | None = None) -> None:
    """Start a server unless --dsn is given, run the phases, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--quick", action="store_true", help="short phases, for a smoke run")
    parser.add_argument("--a-limit", type=int, default=60, help="A's runStartsPerMinute")
    parser.add_argument("--b-rate", type=float, default=2.0, help="B's starts per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="one phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three phases")
    parser.add_argument("--flood", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--tenant", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--forget", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.flood:
        if args.forget:  # every refusal asks the store again: the cost before the memory
            admission_module.RATE_MEMO_MAX_S = 0.0
        print(json.dumps(asyncio.run(flood(args.flood, args.tenant, args.rate, args.seconds))))
        return
    if args.quick:
        args.seconds, args.rounds = 5.0, 1
    with bench_server(args.dsn) as (dsn, server):
        print(asyncio.run(run(args, dsn, server)))


if __name__ == "__main__":
    main()
