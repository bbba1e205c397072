"""Fixtures for tests against a real PostgreSQL server that the fixtures start themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dvt_statestore_pg.testing import (
    PostgresServerError,
    create_schema,
    drop_schema,
    postgres_dsn,
    unique_schema_name,
)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A running server for the whole session: DVT_PG_DSN, or one started here."""
    try:
        with postgres_dsn() as dsn:
            yield dsn
    except PostgresServerError as exc:
        # Never a skip: a missing server is a failure, loudly, in CI and everywhere else.
        pytest.fail(f"PostgreSQL server unavailable: {exc} (CI={os.environ.get('CI', '')})")


@pytest.fixture(scope="module")
def pg_schema(pg_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty schema for one test module, dropped afterwards."""
    schema = unique_schema_name(f"dvt_{request.module.__name__.rsplit('.', 1)[-1]}")
    create_schema(pg_dsn, schema)
    try:
        yield schema
    finally:
        drop_schema(pg_dsn, schema)
