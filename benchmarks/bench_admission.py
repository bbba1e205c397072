"""Benchmarks of tenant admission on PostgreSQL (docs/limits.md, docs/benchmarks.md).

1. Overhead: ``Client.start_run`` of a one-step plan with limits on (PostgreSQL admission,
   room to spare) next to the same start with limits off, alternating in one process on one
   schema, p50/p99 per start; and ``admit`` alone. Also a start refused for the start rate,
   by the store and from the process's memory of the last refusal (what a flood costs).
2. Backlog starvation: tenant A has a large queue (100,000 runs, written with one COPY) and
   keeps its slots busy; tenant B (one slot, queue mode) queues runs one after the other.
   B's dispatch wait is the time from its previous run's terminal event to the registration
   of its next one; p50/p99, with A's backlog and without. The plans of the dispatch
   round's queries at that backlog are printed to stderr (EXPLAIN ANALYZE).

Run: ``python benchmarks/bench_admission.py`` (a durable local server is started for the run;
``--dsn`` to use another). ``--quick`` shrinks the counts for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import dvt_engine.admission as admission_module
from benchmarks.bench_store import bench_server
from dvt_engine.admission import LimitsPatch, StartRequest, plan_size
from dvt_engine.builder import PlanBuilder
from dvt_engine.client import Client
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.errors import RateLimited
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunContext
from dvt_statestore_pg.admission import _CLAIM_HEAD, _QUEUED_TENANTS, PostgresAdmissionStore
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import create_schema, drop_schema, store_url, unique_schema_name

QUICK = PlanBuilder("quick", "1").step("a", "noop").build()


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values`` in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def refused(client: Client, admission: PostgresAdmissionStore, plan_ref: PlanRef,
                  n: int) -> list[str]:
    """A start over the tenant's start rate: refused by the store each time (the refusal not
    remembered), and refused from the process's memory of the last refusal."""
    tenant = f"flood-{uuid.uuid4().hex[:6]}"
    flood = Client(engine=client.engine, store=client.store, tenant=tenant, admission=admission)
    await admission.set_limits(tenant, LimitsPatch.parse({"runStartsPerMinute": 1}))
    await flood.start_run(plan_ref, run_id="first")  # the bucket's one token
    rows = []
    for name, memo_s in (("store asked", 0.0), ("remembered", admission_module.RATE_MEMO_MAX_S)):
        admission_module.RATE_MEMO_MAX_S = memo_s
        samples = []
        for i in range(n):
            began = time.perf_counter()
            try:
                await flood.start_run(plan_ref, run_id=f"{name[0]}-{i}")
            except RateLimited:
                samples.append(time.perf_counter() - began)
        assert len(samples) == n  # every one refused
        rows.append(f"| start over the rate, refused ({name}) | {n} | {pct(samples, .5):.2f} | "
                    f"{pct(samples, .99):.2f} |")
    return rows


async def overhead(url: str, n: int) -> list[str]:
    """Start latency with limits on and off, alternating; admit() alone."""
    store = await PostgresRunStateStore.open(url)
    admission = await PostgresAdmissionStore.open(url)
    engine = ReferenceEngine(store)
    on = Client(engine=engine, store=store, tenant="bench-on", admission=admission)
    off = Client(engine=engine, store=store, tenant="bench-off")
    roomy = LimitsPatch.parse({"maxActiveRuns": 1_000_000, "runStartsPerMinute": 1_000_000})
    await admission.set_limits("bench-on", roomy)
    await admission.set_limits("bench-admit", roomy)
    plan_ref = await on.store_plan(QUICK)
    times: dict[str, list[float]] = {"on": [], "off": [], "admit": []}
    for i in range(n):
        for name, client in (("off", off), ("on", on)) if i % 2 else (("on", on), ("off", off)):
            began = time.perf_counter()
            await client.start_run(plan_ref, run_id=f"{name}-{i}")
            times[name].append(time.perf_counter() - began)
        context = RunContext(tenant_id="bench-admit", project_id="default",
                             environment_id="dev", run_id=f"a-{i}")
        steps, size = await plan_size(store, plan_ref)
        began = time.perf_counter()
        await admission.admit(StartRequest(plan_ref, context, steps, size))
        times["admit"].append(time.perf_counter() - began)
        await admission.release("bench-admit", context.run_id)
    refusals = await refused(on, admission, plan_ref, n)
    await engine.wait_idle()
    await engine.close()
    await admission.close()
    await store.close()
    return [*refusals, f"| start, limits off | {n} | {pct(times['off'], .5):.2f} | "
            f"{pct(times['off'], .99):.2f} |",
            f"| start, limits on | {n} | {pct(times['on'], .5):.2f} | "
            f"{pct(times['on'], .99):.2f} |",
            f"| admit() alone | {n} | {pct(times['admit'], .5):.2f} | "
            f"{pct(times['admit'], .99):.2f} |"]


def split_url(url: str) -> tuple[str, str]:
    """A store URL's connection string and schema."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    rest = urlencode({k: v[0] for k, v in query.items() if k != "schema"})
    return urlunsplit(parts._replace(query=rest)), query["schema"][0]


async def seed_backlog(url: str, tenant: str, plan_ref: PlanRef, n: int) -> float:
    """Put ``n`` runs into the tenant's queue with one COPY (what ``n`` queued starts
    write, without ``n`` admission transactions); seconds taken."""
    began = time.perf_counter()
    conninfo, schema = split_url(url)
    rows = []
    for i in range(n):
        context = RunContext(tenant_id=tenant, project_id="default", environment_id="dev",
                             run_id=f"a-{i}")
        request = StartRequest(plan_ref, context, 1, 0)
        ref, ctx = request.payload()
        rows.append((tenant, context.run_id, request.request_key, ref, ctx))
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        copy = sql.SQL("COPY {}.dvt_admission_queue (tenant_id, run_id, run_request_key,"
                       " plan_ref, context) FROM STDIN").format(sql.Identifier(schema))
        async with conn.cursor() as cur, cur.copy(copy) as writer:
            for row in rows:
                await writer.write_row(row)
        await conn.execute(sql.SQL("VACUUM ANALYZE {}.dvt_admission_queue").format(
            sql.Identifier(schema)))
    return time.perf_counter() - began


async def explain_dispatch(url: str, admission: PostgresAdmissionStore, a: str, b: str
                           ) -> list[str]:
    """The plans of what a dispatch round sends, printed; a summary line for each."""
    conninfo, _ = split_url(url)
    q = admission._q
    statements = {
        "queued_tenants": (q(_QUEUED_TENANTS), None),
        "claim head (A)": (q(_CLAIM_HEAD), (a,)),
        "claim head (B)": (q(_CLAIM_HEAD), (b,)),
    }
    lines = []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        for title, (statement, params) in statements.items():
            async with psycopg.AsyncClientCursor(conn) as cur:
                await cur.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + statement, params)
                plan = "\n".join(str(row[0]) for row in await cur.fetchall())
            print(f"-- {title}\n{plan}\n", file=sys.stderr)
            scans = sorted({m for m in ("Index Scan", "Index Only Scan", "Seq Scan",
                                        "Bitmap Heap Scan") if m in plan})
            took = next((line.split(":")[1].strip() for line in plan.splitlines()
                         if line.startswith("Execution Time")), "?")
            lines.append(f"| {title} | {', '.join(scans)} | {took} |")
    return lines


async def timed(n: int, call: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """p50 and p99 (ms) of ``n`` calls one after the other."""
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - began)
    return pct(samples, .5), pct(samples, .99)


async def starvation(url: str, backlog: int, b_runs: int) -> tuple[str, list[str]]:
    """B's dispatch wait p50/p99 with A's backlog of ``backlog`` queued runs (0: none), and
    the dispatch queries' timings and plans at that backlog."""
    store = await PostgresRunStateStore.open(url)
    admission = await PostgresAdmissionStore.open(url, pool_max=8)
    engine = ReferenceEngine(store)
    suffix = uuid.uuid4().hex[:6]
    a = Client(engine=engine, store=store, tenant=f"a-{suffix}", admission=admission)
    b = Client(engine=engine, store=store, tenant=f"b-{suffix}", admission=admission)
    await admission.set_limits(a.tenant, LimitsPatch.parse(
        {"maxActiveRuns": 20, "overflow": "queue", "maxQueuedRuns": 1_000_000,
         "runStartsPerMinute": 1_000_000}))
    await admission.set_limits(b.tenant, LimitsPatch.parse(
        {"maxActiveRuns": 1, "overflow": "queue", "runStartsPerMinute": 1_000_000}))
    plan_ref = await a.store_plan(QUICK)
    seeded = await seed_backlog(url, a.tenant, plan_ref, backlog) if backlog else 0.0
    for i in range(b_runs):
        await b.start_run(plan_ref, run_id=f"b-{i}")
    details: list[str] = []
    if backlog:
        print(f"seeded {backlog:,} queued runs in {seeded:.1f} s", file=sys.stderr)
        details += await explain_dispatch(url, admission, a.tenant, b.tenant)
        tenants = await timed(20, admission.queued_tenants)
        depths = await timed(20, admission.queue_depths)
        details += [f"| `queued_tenants()` | {tenants[0]:.2f} / {tenants[1]:.2f} ms p50/p99 | |",
                    f"| a count per tenant (the scan it replaces) | {depths[0]:.2f} / "
                    f"{depths[1]:.2f} ms p50/p99 | |"]
    # The queues are full before dispatch begins, so B competes with A's whole backlog.
    assert a._dispatcher is not None
    a._dispatcher.start()  # one dispatcher serves every tenant of the store
    last = b.get_run(f"b-{b_runs - 1}")
    await last.result(timeout=600)
    waits: list[float] = []
    for i in range(1, b_runs):
        before = await store.fetch_events(b.tenant, f"b-{i - 1}")
        header = await store.get_run(b.tenant, f"b-{i}")
        assert header is not None
        assert before[-1].persisted_at is not None
        waits.append(max(0.0, (header.created_at - before[-1].persisted_at).total_seconds()))
    left = (await admission.queue_depths()).get(a.tenant, 0)
    await a.close()
    await admission.close()
    await store.close()
    slow = sum(1 for w in waits if w >= 1.0)
    return (f"| {backlog:,} | {left:,} | {b_runs} | {pct(waits, .5):.1f} | "
            f"{pct(waits, .99):.1f} | {1000 * max(waits):.1f} | {slow} |"), details


async def run(args: argparse.Namespace, dsn: str, server: str) -> str:
    """Both benchmarks, each in a fresh schema."""
    lines = [f"server: {server}; load average {os.getloadavg()[0]:.1f}"]
    for bench in ("overhead", "starvation"):
        if args.only and bench != args.only:
            continue
        schema = unique_schema_name("dvt_bench_admission")
        create_schema(dsn, schema)
        try:
            url = store_url(dsn, schema)
            if bench == "overhead":
                lines += ["", "| what | starts | p50 (ms) | p99 (ms) |", "|---|---|---|---|",
                          *await overhead(url, args.starts)]
            else:
                lines += ["", "| A's backlog | A still queued at the end | B runs | "
                              "B wait p50 (ms) | B wait p99 (ms) | B wait max (ms) | "
                              "waits of 1 s or more |", "|---|---|---|---|---|---|---|"]
                alone, _ = await starvation(url, 0, args.b_runs)
                behind, details = await starvation(url, args.backlog, args.b_runs)
                lines += [alone, behind, "", "| dispatch query at the backlog | plan | time |",
                          "|---|---|---|", *details]
        finally:
            drop_schema(dsn, schema)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Start a server unless --dsn is given, run both benchmarks, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--only", choices=("overhead", "starvation"), help="one benchmark")
    parser.add_argument("--starts", type=int, default=500)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--b-runs", type=int, default=50)
    args = parser.parse_args(argv)
    if args.quick:
        args.starts, args.backlog, args.b_runs = 50, 3000, 10
    with bench_server(args.dsn) as (dsn, server):
        print(asyncio.run(run(args, dsn, server)))


if __name__ == "__main__":
    main()
