"""Small workloads of the PostgreSQL store to profile, one per flame graph in docs/perf/store.md.

Run under a sampling profiler, from a checkout (a durable local server is started for the run):

    py-spy record -f flamegraph -o storm.svg -- python benchmarks/store_profile.py storm
    py-spy record -f flamegraph -o rebuild.svg -- python benchmarks/store_profile.py rebuild
    py-spy record --idle -f flamegraph -o noop.svg -- python benchmarks/store_profile.py noop

``storm``: 1,000 runs of 10 events, then six rounds of the same 10,000 events as retries in
batches of 1,000. ``rebuild``: 3,000 runs of 10 events, rebuilt twice. ``noop``: a 100-step
chain of noop steps on the reference engine over the store, twice. ``status``: 200 running
runs of a 20-step plan, then 20,000 get_run and 20,000 get_snapshot calls. ``list``: 100,000
runs of 20 tenants, then 5,000 list_runs calls for 50 active runs of a tenant. Each prints its
rate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from benchmarks.store_engine import chain, step_intervals
from benchmarks.store_lookup import seed_lookup_runs
from benchmarks.store_scenarios import _header, _step_events, seed_runs
from dvt_engine.models.run import RunStatus
from dvt_local.postgres import start_server
from dvt_statestore_pg import admin
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import create_schema, store_url, unique_schema_name


async def _filled(url: str, runs: int) -> list[list[object]]:
    """``runs`` runs of 10 events each, written; their events in batches of 1,000."""
    async with await PostgresRunStateStore.open(url) as store:
        headers = [(await store.register_run(_header("profile", steps=8)))[0]
                   for _ in range(runs)]
        events = [e for h in headers for e in _step_events(h, 10)]
        batches = [events[i : i + 1000] for i in range(0, len(events), 1000)]
        for batch in batches:
            await store.append_batch(batch)
    return batches  # type: ignore[return-value]


async def storm(url: str) -> None:
    """Retries of stored events, 1,000 per batch."""
    batches = await _filled(url, 1000)
    async with await PostgresRunStateStore.open(url) as store:
        began = time.perf_counter()
        for _ in range(6):
            for batch in batches:
                await store.append_batch(batch)  # type: ignore[arg-type]
        took = time.perf_counter() - began
    print(f"storm: {60_000 / took:,.0f} duplicates/s")


async def rebuild(url: str) -> None:
    """Every snapshot recomputed from the log, twice."""
    await _filled(url, 3000)
    for _ in range(2):
        report = await admin.rebuild(url)
        print(f"rebuild: {report.events / report.seconds:,.0f} events/s")


async def noop(url: str) -> None:
    """A chain of noop steps on the reference engine, twice."""
    for _ in range(2):
        gaps, took = await step_intervals(await PostgresRunStateStore.open(url), chain(100))
        gaps.sort()
        print(f"noop: {took * 10:.2f} ms per step (mean), {gaps[len(gaps) // 2] * 1000:.2f} p50")


async def status(url: str) -> None:
    """get_run and get_snapshot by id, over 200 running runs."""
    async with await PostgresRunStateStore.open(url) as store:
        ids = await seed_lookup_runs(store)
        for name, lookup in (("get_run", store.get_run), ("get_snapshot", store.get_snapshot)):
            began = time.perf_counter()
            for i in range(20_000):
                await lookup("lookup", ids[i % len(ids)])
            print(f"{name}: {20_000 / (time.perf_counter() - began):,.0f}/s")


async def list_runs(url: str, dsn: str, schema: str) -> None:
    """list_runs of 50 active runs of a tenant, over 100,000 runs of 20 tenants."""
    async with await PostgresRunStateStore.open(url) as store:
        await seed_runs(dsn, schema, 100_000)
        began = time.perf_counter()
        for i in range(5000):
            await store.list_runs(
                f"t{i % 20:02d}", status=[RunStatus.RUNNING, RunStatus.PAUSED], limit=50
            )
        print(f"list_runs: {5000 / (time.perf_counter() - began):,.0f}/s")


def main() -> None:
    """Start a server, run the named workload in a fresh schema."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workload", choices=["storm", "rebuild", "noop", "status", "list"])
    args = parser.parse_args()
    pg = start_server()
    try:
        schema = unique_schema_name("dvt_profile")
        create_schema(pg.dsn(), schema)
        url = store_url(pg.dsn(), schema)
        if args.workload == "list":
            asyncio.run(list_runs(url, pg.dsn(), schema))
        else:
            work = {"storm": storm, "rebuild": rebuild, "noop": noop, "status": status}
            asyncio.run(work[args.workload](url))
    finally:
        pg.destroy()


if __name__ == "__main__":
    main()
