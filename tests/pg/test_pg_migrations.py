"""Migrations: ordered, recorded, idempotent, and safe when several processes run them at once."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg import sql

from dvt_statestore_pg.migrations import (
    MIGRATIONS_TABLE,
    MigrationChecksumMismatch,
    available_migrations,
    migrate,
)
from dvt_statestore_pg.testing import drop_schema, unique_schema_name


def _applied(dsn: str, schema: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT version FROM {} ORDER BY version").format(
                sql.Identifier(schema, MIGRATIONS_TABLE)
            )
        ).fetchall()
    return [r[0] for r in rows]


def test_files_are_ordered_and_numbered_from_one() -> None:
    versions = [m.version for m in available_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_migrate_twice_applies_once(pg_dsn: str) -> None:
    schema = unique_schema_name("dvt_mig_twice")
    try:
        first = await migrate(pg_dsn, schema)
        second = await migrate(pg_dsn, schema)
        assert first == [m.version for m in available_migrations()]
        assert second == []
        assert _applied(pg_dsn, schema) == first
    finally:
        drop_schema(pg_dsn, schema)


async def test_concurrent_migrations_apply_each_file_once(pg_dsn: str) -> None:
    schema = unique_schema_name("dvt_mig_race")
    try:
        results = await asyncio.gather(*(migrate(pg_dsn, schema) for _ in range(6)))
        expected = [m.version for m in available_migrations()]
        assert sorted(v for r in results for v in r) == expected
        assert sum(1 for r in results if r) == 1
        assert _applied(pg_dsn, schema) == expected
    finally:
        drop_schema(pg_dsn, schema)


async def test_an_edited_migration_is_refused(pg_dsn: str) -> None:
    schema = unique_schema_name("dvt_mig_edit")
    try:
        await migrate(pg_dsn, schema)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("UPDATE {} SET checksum = 'tampered' WHERE version = 1").format(
                    sql.Identifier(schema, MIGRATIONS_TABLE)
                )
            )
        with pytest.raises(MigrationChecksumMismatch):
            await migrate(pg_dsn, schema)
    finally:
        drop_schema(pg_dsn, schema)


async def test_schema_names_are_quoted_not_interpolated(pg_dsn: str) -> None:
    schema = 'dvt "odd"; DROP TABLE x; --' + unique_schema_name("")
    try:
        assert await migrate(pg_dsn, schema)
        assert _applied(pg_dsn, schema)
    finally:
        drop_schema(pg_dsn, schema)
