"""Fixtures for tests against a real PostgreSQL server (the dvt pytest plugin starts it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import create_schema, drop_schema, store_url, unique_schema_name


@pytest.fixture(scope="session")
def pg_dsn(dvt_postgres_dsn: str) -> str:
    """The dvt pytest plugin's server for the whole session (DVT_PG_DSN, or one it started)."""
    return dvt_postgres_dsn


@pytest.fixture(scope="module")
def pg_schema(pg_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty schema for one test module, dropped afterwards."""
    schema = unique_schema_name(f"dvt_{request.module.__name__.rsplit('.', 1)[-1]}")
    create_schema(pg_dsn, schema)
    try:
        yield schema
    finally:
        drop_schema(pg_dsn, schema)


@pytest.fixture(scope="module")
def pg_store_url(pg_dsn: str, pg_schema: str) -> str:
    """The store URL of this module's schema."""
    return store_url(pg_dsn, pg_schema)


@pytest.fixture
async def pg_store(pg_store_url: str) -> AsyncIterator[PostgresRunStateStore]:
    """An open store on this module's schema (migrated on open)."""
    store = await PostgresRunStateStore.open(pg_store_url)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def pg_store_factory(
    pg_store_url: str,
) -> AsyncIterator[Callable[[], Awaitable[PostgresRunStateStore]]]:
    """Opens more stores on the same schema: other writer processes, as far as the data knows."""
    opened: list[PostgresRunStateStore] = []

    async def factory() -> PostgresRunStateStore:
        store = await PostgresRunStateStore.open(pg_store_url)
        opened.append(store)
        return store

    try:
        yield factory
    finally:
        for store in opened:
            await store.close()
