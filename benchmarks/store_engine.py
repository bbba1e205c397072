"""The reference engine over the PostgreSQL store: the per-step overhead of a ``noop`` step.

A chain of ``--noop-steps`` sequential ``noop`` steps runs on the in-process reference engine,
once over the memory store (the engine's own cost, the baseline) and once over
``PostgresRunStateStore`` (the same plus every event written, durably, and the snapshot read
back). Each step's time is the interval between consecutive StepCompleted events' persistedAt
(the store's clock), so the figures are per step, p50 and p99, not a mean over the chain.

The bare baselines are psycopg writing a step's two events (StepStarted, StepCompleted) on the
same server, measured the same way (StepCompleted row to StepCompleted row, the server's clock):
as two autocommit INSERTs (two durable commits, the write pattern of a step before dvt wrote
them together) and as one INSERT of both rows (one durable commit, dvt's pattern now).
"""

from __future__ import annotations

import argparse
import itertools
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.store_baseline import BASELINE_DDL, envelope
from benchmarks.store_table import Row, percentile
from dvt_engine import Client, PlanBuilder, ReferenceSettings
from dvt_engine.plugins import open_engine
from dvt_engine.ports import RunStateStore
from dvt_engine.steps import builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import store_url

TENANT = "noop-bench"


def chain(steps: int) -> dict[str, Any]:
    """A plan of ``steps`` noop steps, each depending on the one before."""
    builder = PlanBuilder("noop-chain", "1")
    for i in range(steps):
        builder.step(f"s{i}", "noop", depends_on=[f"s{i - 1}"] if i else [])
    return builder.build()


async def step_intervals(store: RunStateStore, plan: dict[str, Any]) -> tuple[list[float], float]:
    """Run ``plan`` to its end on the reference engine over ``store``: the seconds between
    consecutive steps' completions, and the run's wall time."""
    engine = open_engine(ReferenceSettings(), store=store, registry=builtin_registry(),
                         artifacts=MemoryArtifactStore())
    async with Client(engine=engine, store=store, tenant=TENANT, owns_store=True) as client:
        began = time.perf_counter()
        handle = await client.start_run(plan, run_id=f"noop-{uuid.uuid4().hex[:12]}")
        snapshot = await handle.result(timeout=600)
        took = time.perf_counter() - began
        assert snapshot.status == "COMPLETED", snapshot.status
        events = await store.fetch_events(TENANT, handle.run_id)
    done = [e.persisted_at for e in events if e.event_type == "StepCompleted"]
    assert len(done) == len(plan["steps"]), len(done)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(done) if a and b]
    return gaps, took


_BARE_STEP_EVENT = (
    "INSERT INTO raw_events (run_id, run_seq, idempotency_key, event_id, event_type, tenant_id,"
    " emitted_at, envelope) VALUES (%s, %s, %s, %s, %s, 'bench-tenant', now(), %s)"
    " RETURNING persisted_at"
)


_BARE_STEP_BOTH = (
    "INSERT INTO raw_events (run_id, run_seq, idempotency_key, event_id, event_type, tenant_id,"
    " emitted_at, envelope) VALUES (%s, %s, %s, %s, 'StepStarted', 'bench-tenant', now(), %s),"
    " (%s, %s, %s, %s, 'StepCompleted', 'bench-tenant', now(), %s) RETURNING persisted_at"
)


async def bare_step_commit(dsn: str, schema: str, steps: int) -> Row:
    """One durable autocommit INSERT of both events per step, one step after the other."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL(BASELINE_DDL.replace("CREATE TABLE", "CREATE TABLE IF NOT"
                                                        " EXISTS")))
        run_id = str(uuid.uuid4())
        done = []
        began = time.perf_counter()
        for step in range(steps):
            values: list[Any] = []
            for seq in (2 * step + 1, 2 * step + 2):
                key = uuid.uuid4().hex * 2
                values += [run_id, seq, key, str(uuid.uuid4()), envelope(run_id, seq, key)]
            cur = await conn.execute(_BARE_STEP_BOTH, values)
            rows = await cur.fetchall()
            done.append(rows[-1][0])
        took = time.perf_counter() - began
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(done)]
    return Row("noop step, per-step overhead", "bare psycopg: 1 durable INSERT a step", steps,
               took, percentile(gaps, 0.5) * 1000, percentile(gaps, 0.99) * 1000,
               f"{steps} steps; both rows in one statement")


async def bare_step_commits(dsn: str, schema: str, steps: int) -> Row:
    """Two durable autocommit INSERTs per step, one step after the other."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL(BASELINE_DDL.replace("CREATE TABLE", "CREATE TABLE IF NOT"
                                                        " EXISTS")))
        run_id = str(uuid.uuid4())
        done = []
        began = time.perf_counter()
        for seq in range(1, 2 * steps + 1):
            key = uuid.uuid4().hex * 2
            kind = "StepStarted" if seq % 2 else "StepCompleted"
            cur = await conn.execute(_BARE_STEP_EVENT, (run_id, seq, key, str(uuid.uuid4()),
                                                        kind, envelope(run_id, seq, key)))
            row = await cur.fetchone()
            assert row is not None
            if kind == "StepCompleted":
                done.append(row[0])
        took = time.perf_counter() - began
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(done)]
    return Row("noop step, per-step overhead", "bare psycopg: 2 durable INSERTs a step", steps,
               took, percentile(gaps, 0.5) * 1000, percentile(gaps, 0.99) * 1000,
               f"{steps} steps; StepCompleted row to StepCompleted row")


async def reference_noop_steps(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """The bare commits and the memory store's chain (baselines), then PostgreSQL's, each
    warmed up by a short run."""
    await bare_step_commits(dsn, schema, 5)
    rows: list[Row] = [await bare_step_commits(dsn, schema, args.noop_steps),
                       await bare_step_commit(dsn, schema, args.noop_steps)]
    plan = chain(args.noop_steps)
    for subject, opener in (
        ("reference + memory store", lambda: _memory()),
        ("reference + PostgreSQL store", lambda: PostgresRunStateStore.open(
            store_url(dsn, schema))),
    ):
        await step_intervals(await opener(), chain(5))
        gaps, took = await step_intervals(await opener(), plan)
        rows.append(Row("noop step, per-step overhead", subject, args.noop_steps, took,
                        percentile(gaps, 0.5) * 1000, percentile(gaps, 0.99) * 1000,
                        f"{args.noop_steps}-step chain; StepCompleted to StepCompleted"))
    return rows


async def _memory() -> RunStateStore:
    return MemoryRunStateStore()
