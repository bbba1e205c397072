"""Admission on Conductor (real server, run store and admission on a real PostgreSQL): exact
slots under concurrent starts from two processes, queued runs started as a slot frees."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from admission_helpers import exact_slots, queued_start_when_a_slot_frees
from conductor_helpers import make_engine

from dvt_adapters_conductor.engine import ConductorEngine
from dvt_statestore_pg.store import PostgresRunStateStore


@pytest_asyncio.fixture(loop_scope="session")
async def pg_conductor(dvt_postgres_store_url: str, conductor_url: str
                       ) -> AsyncIterator[tuple[PostgresRunStateStore, ConductorEngine]]:
    """A PostgreSQL store on a fresh schema and a Conductor engine (own task types) over it."""
    store = await PostgresRunStateStore.open(dvt_postgres_store_url)
    engine = make_engine(conductor_url, store)  # type: ignore[arg-type]
    try:
        yield store, engine
    finally:
        await engine.close()
        await store.close()


async def test_concurrent_starts_with_room_for_k_create_exactly_k_conductor_runs(
        dvt_postgres_store_url: str,
        pg_conductor: tuple[PostgresRunStateStore, ConductorEngine]) -> None:
    store, engine = pg_conductor
    await exact_slots(dvt_postgres_store_url, store, engine, f"t-{uuid.uuid4().hex[:8]}")


async def test_a_queued_run_starts_on_conductor_when_a_slot_frees(
        dvt_postgres_store_url: str,
        pg_conductor: tuple[PostgresRunStateStore, ConductorEngine]) -> None:
    store, engine = pg_conductor
    await queued_start_when_a_slot_frees(dvt_postgres_store_url, store, engine,
                                         f"t-{uuid.uuid4().hex[:8]}")
