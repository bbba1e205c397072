"""Whatever the archive thresholds, every read of every run stays what it was."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from archive_helpers import drain_outbox, hot_counts, read_all, seed_runs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvt_archive.archiver import archive_runs
from dvt_statestore_pg.store import PostgresRunStateStore

SCENARIOS = ["one-step", "linear-chain", "skip-step"]


def _age(dsn: str, schema: str, key: tuple[str, str], days: int) -> None:
    """Make the run's last append ``days`` old (as if it ended then)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f'UPDATE "{schema}".dvt_runs SET updated_at = clock_timestamp()'
                     " - make_interval(days => %s) WHERE tenant_id = %s AND run_id = %s",
                     (days, *key))


async def _check(url: str, dsn: str, schema: str, root: Path, ages: list[int],
                 thresholds: list[int]) -> None:
    store = await PostgresRunStateStore.open(url)
    try:
        runs = await seed_runs(store, SCENARIOS, f"p{uuid.uuid4().hex[:8]}")
        for key, days in zip(runs, ages, strict=True):
            await asyncio.to_thread(_age, dsn, schema, key, days)
        await drain_outbox(store)
        before = await read_all(store, runs)
        lowest = None
        for threshold in thresholds:
            await archive_runs(url, str(root), older_than=timedelta(days=threshold))
            lowest = threshold if lowest is None else min(lowest, threshold)
            hot = await asyncio.to_thread(hot_counts, dsn, schema, runs)
            cold = {key for key, days in zip(runs, ages, strict=True) if days >= lowest}
            assert {key for key in runs if hot[key] == 0} == cold
            assert await read_all(store, runs) == before
    finally:
        await store.close()


@pytest.mark.slow
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ages=st.lists(st.integers(0, 200), min_size=len(SCENARIOS), max_size=len(SCENARIOS)),
       thresholds=st.lists(st.integers(0, 200), min_size=1, max_size=3))
def test_any_archive_thresholds_keep_every_read_identical(
    ages: list[int], thresholds: list[int], pg_store_url: str, pg_dsn: str, pg_schema: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("cold")
    asyncio.run(_check(pg_store_url, pg_dsn, pg_schema, root, ages, thresholds))
