"""Admission on Temporal (real dev server, run store and admission on a real PostgreSQL):
exact slots under concurrent starts from two processes, queued runs started as a slot frees."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from admission_helpers import exact_slots, queued_start_when_a_slot_frees

from dvt_adapters_temporal.engine import TemporalEngine
from dvt_engine.settings import TemporalSettings
from dvt_statestore_pg.store import PostgresRunStateStore


@pytest_asyncio.fixture(loop_scope="session")
async def pg_temporal(dvt_postgres_store_url: str, dvt_temporal_settings: TemporalSettings
                      ) -> AsyncIterator[tuple[PostgresRunStateStore, TemporalEngine]]:
    """A PostgreSQL store on a fresh schema and a Temporal engine (own task queue) over it."""
    store = await PostgresRunStateStore.open(dvt_postgres_store_url)
    engine = TemporalEngine(store=store, settings=dvt_temporal_settings)
    try:
        yield store, engine
    finally:
        await engine.close()
        await store.close()


async def test_concurrent_starts_with_room_for_k_create_exactly_k_temporal_runs(
        dvt_postgres_store_url: str,
        pg_temporal: tuple[PostgresRunStateStore, TemporalEngine]) -> None:
    store, engine = pg_temporal
    await exact_slots(dvt_postgres_store_url, store, engine, f"t-{uuid.uuid4().hex[:8]}")


async def test_a_queued_run_starts_on_temporal_when_a_slot_frees(
        dvt_postgres_store_url: str,
        pg_temporal: tuple[PostgresRunStateStore, TemporalEngine]) -> None:
    store, engine = pg_temporal
    await queued_start_when_a_slot_frees(dvt_postgres_store_url, store, engine,
                                         f"t-{uuid.uuid4().hex[:8]}")
