"""The audit sealer and verifier: events per second on a store of cloned real runs.

Seeds ``--events`` events (default 100,000) as copies of one ``parallel-50`` run (the seeding of
bench_archive.py), then measures:

- ``seal (backfill)``: the first ``seal`` pass, every event chained, stored and one checkpoint
  signed over every run's head;
- ``seal (nothing new)``: a second pass, which only finds that no run moved;
- ``verify``: every chain recomputed from the events and checked against the chain rows and
  the signed checkpoint;
- the floor: the same chain computed in a loop over rows already in memory (canonical JSON and
  sha256 only), what any sealer in Python pays per event.

Run: ``python benchmarks/bench_audit.py`` (``--quick`` for 10,000 events, ``--dsn`` for another
server, ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from bench_archive import seed
from bench_store import bench_server

from dvt_engine.audit import GENESIS, seal_events
from dvt_engine.audit_keys import generate_key, load_keyring, load_signer
from dvt_statestore_pg.audit import seal, verify
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import create_schema, drop_schema, store_url


def floor(dsn: str, schema: str) -> float:
    """Seconds to chain every event in memory (rows fetched first, not timed)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f'SELECT run_id, run_seq, persisted_at, envelope::text'
                            f' FROM "{schema}".dvt_events ORDER BY run_id, run_seq').fetchall()
    by_run: dict[str, list[Any]] = {}
    for run, seq, at, env in rows:
        by_run.setdefault(run, []).append((seq, at, env))
    started = time.perf_counter()
    for run_rows in by_run.values():
        seal_events(GENESIS, run_rows)
    return time.perf_counter() - started


async def run(args: argparse.Namespace, dsn: str, server: str) -> dict[str, Any]:
    """Seed, seal, seal again, verify; the timings."""
    schema = "bench_audit"
    drop_schema(dsn, schema)
    create_schema(dsn, schema)
    url = store_url(dsn, schema)
    try:
        runs, events = await seed(url, dsn, schema, args.events)
        with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
            generate_key("bench", Path(tmp) / "k.pem", Path(tmp) / "ring.json")
            signer = load_signer(Path(tmp) / "k.pem", "bench")
            ring = load_keyring(Path(tmp) / "ring.json")
            store = await PostgresRunStateStore.open(url)
            try:
                first = await seal(store, signer)
                second = await seal(store, signer)
                started = time.perf_counter()
                checked = await verify(store, ring)
                verify_s = time.perf_counter() - started
            finally:
                await store.close()
        assert first.events == events
        assert checked.ok, checked.to_dict()
        floor_s = floor(dsn, schema)
    finally:
        drop_schema(dsn, schema)
    return {"server": server, "runs": runs, "events": events,
            "seal_s": first.seconds, "seal_events_per_s": events / first.seconds,
            "seal_nothing_new_s": second.seconds,
            "verify_s": verify_s, "verify_events_per_s": events / verify_s,
            "floor_s": floor_s, "floor_events_per_s": events / floor_s}


def table(r: dict[str, Any]) -> str:
    """The results as a text table."""
    return "\n".join([
        f"server: {r['server']}; {r['runs']} runs, {r['events']} events",
        f"seal (backfill)     {r['seal_s']:8.2f} s  {r['seal_events_per_s']:10,.0f} events/s",
        f"seal (nothing new)  {r['seal_nothing_new_s']:8.3f} s",
        f"verify              {r['verify_s']:8.2f} s  {r['verify_events_per_s']:10,.0f} events/s",
        f"floor (in memory)   {r['floor_s']:8.2f} s  {r['floor_events_per_s']:10,.0f} events/s",
    ])


def main(argv: list[str] | None = None) -> None:
    """Start a server unless --dsn is given, run, print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.events = 10_000
    with bench_server(args.dsn) as (dsn, server):
        results = asyncio.run(run(args, dsn, server))
    print(json.dumps(results, indent=1) if args.json else table(results))


if __name__ == "__main__":
    main()
