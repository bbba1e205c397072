"""The reference engine over the PostgreSQL store: the per-step overhead of a ``noop`` step.

A chain of ``--noop-steps`` sequential ``noop`` steps runs on the in-process reference engine,
once over the memory store (the engine's own cost, the baseline) and once over
``PostgresRunStateStore`` (the same plus every event written, durably, and the snapshot read
back). Each step's time is the interval between consecutive StepCompleted events' persistedAt
(the store's clock), so the figures are per step, p50 and p99, not a mean over the chain.
"""

from __future__ import annotations

import argparse
import itertools
import time
import uuid
from typing import Any

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


async def reference_noop_steps(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """The memory store's chain (baseline), then PostgreSQL's, each warmed up by a short run."""
    rows: list[Row] = []
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
