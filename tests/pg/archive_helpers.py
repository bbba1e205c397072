"""Runs to archive, and everything a reader sees of them, for the cold archive tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow.parquet as pq

from contract_tests.scenarios import execute_scenario, get_scenario
from dvt_engine.archive import ColdEventReader
from dvt_engine.checksum import snapshot_checksum
from dvt_engine.plugins import open_engine
from dvt_statestore_pg.store import PostgresRunStateStore

RunKey = tuple[str, str]


@dataclass(frozen=True)
class Reads:
    """A run as every reader saw it: each event's JSON and the snapshots."""

    events: tuple[str, ...]
    streamed: tuple[str, ...]
    snapshot: str
    projected: str
    checksum: str


async def seed_runs(store: PostgresRunStateStore, scenario_ids: Iterable[str],
                    prefix: str) -> list[RunKey]:
    """Drive each scenario on the reference engine under a fresh run id; their (tenant, run)."""
    engine = open_engine("reference", store=store)
    runs = []
    try:
        for scenario_id in scenario_ids:
            outcome = await execute_scenario(get_scenario(scenario_id), engine, store,
                                             run_id=f"{prefix}-{scenario_id}")
            if outcome.run_ref is not None:
                runs.append((outcome.tenant_id, outcome.run_id))
    finally:
        await engine.close()
    return runs


async def stream(store: PostgresRunStateStore, tenant: str, run: str, count: int) -> list[str]:
    """The first ``count`` events ``follow`` delivers from the start of the run."""
    seen: list[str] = []
    if count == 0:
        return seen
    async with asyncio.timeout(30):
        async for event in store.follow(tenant, run, after_seq=0):
            seen.append(event.model_dump_json())
            if len(seen) == count:
                break
    return seen


async def read_all(store: PostgresRunStateStore, runs: Iterable[RunKey],
                   cold: ColdEventReader | None = None) -> dict[RunKey, Reads]:
    """What fetch_events, follow, get_snapshot and project give for each run, read by a fresh
    store on ``store``'s URL (a store's cache of run states would hide what is stored), with
    ``cold`` attached when given."""
    fresh = await PostgresRunStateStore.open(store.url)
    if cold is not None:
        fresh.attach_cold_reader(cold)
    try:
        return await _read_all(fresh, runs)
    finally:
        await fresh.close()


async def _read_all(store: PostgresRunStateStore, runs: Iterable[RunKey]
                    ) -> dict[RunKey, Reads]:
    reads = {}
    for tenant, run in runs:
        events = [e.model_dump_json() for e in await store.fetch_events(tenant, run)]
        snapshot = await store.get_snapshot(tenant, run)
        assert snapshot is not None
        projected = await store.project(tenant, run)
        reads[(tenant, run)] = Reads(
            tuple(events), tuple(await stream(store, tenant, run, len(events))),
            snapshot.model_dump_json(), projected.model_dump_json(),
            snapshot_checksum(projected))
    return reads


async def drain_outbox(store: PostgresRunStateStore) -> None:
    """Deliver every outbox row (as a service process would), so runs may be archived."""
    while True:
        items = await store.claim_outbox(limit=1000)
        if not items:
            return
        await store.ack_outbox([item.id for item in items])


def hot_counts(dsn: str, schema: str, runs: Iterable[RunKey]) -> dict[RunKey, int]:
    """How many events of each run are in the hot log."""
    keys = list(runs)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f'SELECT tenant_id, run_id, count(*) FROM "{schema}".dvt_events'
            " JOIN unnest(%s::text[], %s::text[]) AS u(t, r)"
            " ON tenant_id = u.t AND run_id = u.r GROUP BY 1, 2",
            ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
    counts = {k: 0 for k in keys}
    counts.update({(t, r): int(n) for t, r, n in rows})
    return counts


def parquet_rows(root: Path) -> list[tuple[str, str, int]]:
    """(tenant, run, runSeq) of every row of every Parquet file under a local cold root."""
    found = []
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path)
        found += list(zip(table.column("tenant_id").to_pylist(),
                          table.column("run_id").to_pylist(),
                          table.column("run_seq").to_pylist(), strict=True))
    return found
