"""Ordered SQL migrations, applied once per schema under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

from dvt_engine.errors import StoreUnavailable

MIGRATIONS_TABLE = "dvt_schema_migrations"
_FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# First half of the two-key advisory lock; the second half is derived from the schema name,
# so migrations of different schemas in one database do not wait for each other.
_LOCK_CLASS = 0x6476_7401 & 0x7FFF_FFFF


@dataclass(frozen=True)
class Migration:
    """One SQL file of the package's migrations directory."""

    version: int
    name: str
    sql_text: str

    @property
    def checksum(self) -> str:
        """sha256 of the file, to notice a file edited after it was applied."""
        return hashlib.sha256(self.sql_text.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found: list[Migration] = []
    for entry in resources.files("dvt_statestore_pg").joinpath("migrations").iterdir():
        match = _FILE_PATTERN.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(schema.encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


class MigrationChecksumMismatch(RuntimeError):
    """An applied migration's file changed since it was applied."""


async def apply_migrations(conn: psycopg.AsyncConnection[object], schema: str) -> list[int]:
    """Bring ``schema`` up to date; return the versions this call applied.

    Everything happens in one transaction holding a transaction-scoped advisory lock, so two
    concurrent callers serialise and the second one finds nothing left to do.
    """
    applied_now: list[int] = []
    ident = sql.Identifier(schema)
    table = sql.Identifier(schema, MIGRATIONS_TABLE)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _lock_key(schema)))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ).format(table)
        )
        cur = await conn.execute(sql.SQL("SELECT version, checksum FROM {}").format(table))
        rows: list[tuple[int, str]] = await cur.fetchall()  # type: ignore[assignment]
        done = {int(version): str(checksum) for version, checksum in rows}
        # The files name their tables unqualified; the schema is chosen here, for this
        # transaction only.
        await conn.execute("SELECT set_config('search_path', %s, true)", (ident.as_string(conn),))
        for migration in available_migrations():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationChecksumMismatch(
                        f"migration {migration.version:04d}_{migration.name} changed after it was "
                        f"applied to schema {schema!r}"
                    )
                continue
            await conn.execute(migration.sql_text.encode())
            await conn.execute(
                sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
                    table
                ),
                (migration.version, migration.name, migration.checksum),
            )
            applied_now.append(migration.version)
    return applied_now


async def migrate(conninfo: str, schema: str) -> list[int]:
    """Connect, apply pending migrations to ``schema`` and return the versions applied."""
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}", retryable=True) from exc
    async with conn:
        return await apply_migrations(conn, schema)
