"""Retention expiry and tenant purge: seconds for a store of cloned real runs, archived.

Seeds ``--events`` events (default 100,000) as copies of one ``parallel-50`` run (the seeding of
bench_archive.py), seals them (bench_audit.py's sealer) and archives them all to a local
directory, then measures, each on a store of its own:

- ``retention apply`` eight years on: every run past the default seven-year term; registry,
  chain, heads and run rows deleted in one transaction, a signed tombstone with every run's
  head, then the Parquet files and manifests deleted;
- ``tenant purge``: the same store content removed by tenant, the checkpoints re-signed without
  its heads, the tombstone signed, the tenant's prefix deleted;
- ``tenant purge (all hot)``: the same, on a store where nothing was archived (every event and
  outbox row deleted from PostgreSQL).

Run: ``python benchmarks/bench_retention.py`` (``--quick`` for 10,000 events, ``--dsn`` for
another server, ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench_archive import seed
from bench_store import bench_server

from dvt_archive.archiver import archive_runs
from dvt_archive.purge import purge_tenant
from dvt_archive.retention import apply_retention
from dvt_engine.audit_keys import Signer, generate_key, load_keyring, load_signer
from dvt_statestore_pg.audit import seal, verify
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import create_schema, drop_schema, store_url


async def prepared(dsn: str, schema: str, events: int, signer: Signer, cold: Path | None
                   ) -> tuple[str, int, int]:
    """A sealed, archived store: (url, runs, events)."""
    drop_schema(dsn, schema)
    create_schema(dsn, schema)
    url = store_url(dsn, schema)
    runs, seeded = await seed(url, dsn, schema, events)
    store = await PostgresRunStateStore.open(url)
    try:
        await seal(store, signer)
    finally:
        await store.close()
    if cold is not None:
        report = await archive_runs(url, str(cold), older_than=timedelta(0))
        assert report.runs == runs, report.to_dict()
    return url, runs, seeded


async def run(args: argparse.Namespace, dsn: str, server: str) -> dict[str, Any]:
    """Seed twice; expire one store by retention, purge the other; the timings."""
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        generate_key("bench", Path(tmp) / "k.pem", Path(tmp) / "ring.json")
        signer = load_signer(Path(tmp) / "k.pem", "bench")
        ring = load_keyring(Path(tmp) / "ring.json")
        try:
            url, runs, events = await prepared(dsn, "bench_retention", args.events, signer,
                                                  Path(tmp) / "cold-r")
            later = datetime.now(UTC) + timedelta(days=8 * 366)
            expired = await apply_retention(url, str(Path(tmp) / "cold-r"), signer=signer,
                                            now=later)
            assert expired.expired_runs == runs, expired.to_dict()
            assert not list((Path(tmp) / "cold-r").rglob("*.parquet"))
            url2, _, _ = await prepared(dsn, "bench_purge", args.events, signer,
                                           Path(tmp) / "cold-p")
            tenant = next((Path(tmp) / "cold-p").glob("tenant=*")).name.split("=", 1)[1]
            purged = await purge_tenant(url2, tenant, signer, actor="bench", roles=("admin",))
            assert purged.removed["runs"] == runs, purged.to_dict()
            url3, _, _ = await prepared(dsn, "bench_purge_hot", args.events, signer, None)
            hot = await purge_tenant(url3, tenant, signer, actor="bench", roles=("admin",))
            assert hot.removed["events"] == events, hot.to_dict()
            store = await PostgresRunStateStore.open(url2)
            try:
                checked = await verify(store, ring)
            finally:
                await store.close()
            assert checked.ok, checked.to_dict()
        finally:
            drop_schema(dsn, "bench_retention")
            drop_schema(dsn, "bench_purge")
            drop_schema(dsn, "bench_purge_hot")
    return {"server": server, "runs": runs, "events": events,
            "expire_s": expired.seconds, "expire_events_per_s": events / expired.seconds,
            "expire_files": expired.files, "purge_s": purged.seconds,
            "purge_events_per_s": events / purged.seconds, "purge_objects": purged.objects,
            "checkpoints_resigned": (purged.checkpoints or {}).get("rewritten"),
            "purge_hot_s": hot.seconds, "purge_hot_events_per_s": events / hot.seconds}


def table(r: dict[str, Any]) -> str:
    """The results as a text table."""
    return "\n".join([
        f"server: {r['server']}; {r['runs']} runs, {r['events']} events, all archived",
        f"retention apply (expire all) {r['expire_s']:8.2f} s"
        f"  {r['expire_events_per_s']:10,.0f} events/s  {r['expire_files']} files",
        f"tenant purge                 {r['purge_s']:8.2f} s"
        f"  {r['purge_events_per_s']:10,.0f} events/s  {r['purge_objects']} objects,"
        f" checkpoints {r['checkpoints_resigned']} re-signed",
        f"tenant purge (all hot)       {r['purge_hot_s']:8.2f} s"
        f"  {r['purge_hot_events_per_s']:10,.0f} events/s",
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
