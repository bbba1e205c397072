"""Fixtures for tests against a real PostgreSQL server (the dvt pytest plugin starts it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dvt_engine.audit_keys import Keyring, Signer, generate_key, load_keyring, load_signer
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


@pytest.fixture
async def store(pg_dsn: str, request: pytest.FixtureRequest
                ) -> AsyncIterator[PostgresRunStateStore]:
    """A store on a schema of its own for one test (for checks that are store-wide)."""
    schema = unique_schema_name(f"dvt_{request.module.__name__.rsplit('.', 1)[-1]}")
    create_schema(pg_dsn, schema)
    opened = await PostgresRunStateStore.open(store_url(pg_dsn, schema))
    try:
        yield opened
    finally:
        await opened.close()
        drop_schema(pg_dsn, schema)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Signer, Keyring]:
    """An audit signing key k1 and a keyring holding its public key."""
    generate_key("k1", tmp_path / "k1.pem", tmp_path / "keyring.json")
    return load_signer(tmp_path / "k1.pem", "k1"), load_keyring(tmp_path / "keyring.json")
