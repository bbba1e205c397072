"""Retention policies, tombstones and pending cold-tier cleanup on PostgreSQL (migration 0012).

The SQL side of ``dvt tenant purge`` and ``dvt retention`` (dvt_archive.purge,
dvt_archive.retention): a tenant's terms, the signed tombstones, the checkpoints re-signed
without a purged tenant's heads, and what ``dvt audit verify`` makes of tombstones.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from dvt_engine.audit import Finding, payload_digest
from dvt_engine.audit_keys import Keyring, Signer
from dvt_engine.erasure import (
    RetentionPolicy,
    Tombstone,
    expired_heads,
    names_tenant,
    tombstone_summary,
    without_tenant,
)
from dvt_engine.errors import StoreUnavailable, UsageError
from dvt_engine.identifiers import validate_identifier
from dvt_statestore_pg.config import StoreConfig, parse_store_url
from dvt_statestore_pg.migrations import apply_migrations

Conn = psycopg.AsyncConnection[Any]
#: The sealer's lock (dvt_statestore_pg.audit): a removal waits for a seal pass to end.
SEAL_LOCK = 0x64767461
#: Upper bounds of a policy's terms (a typo of 90000 days is refused, not stored).
MAX_HOT_DAYS = 36500
MAX_COLD_YEARS = 100


def t(schema: str, name: str) -> sql.Identifier:
    """A table of the store's schema."""
    return sql.Identifier(schema, name)


@asynccontextmanager
async def connect(store_url: str, name: str) -> AsyncIterator[tuple[Conn, StoreConfig]]:
    """An autocommit connection to a migrated store, and the store's config."""
    config = parse_store_url(store_url)
    try:
        conn = await psycopg.AsyncConnection.connect(config.conninfo, autocommit=True,
                                                     application_name=name)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL at {config.redacted()}") from exc
    async with conn:
        await apply_migrations(conn, config.schema)
        yield conn, config


async def lock_removals(conn: Conn, schema: str) -> None:
    """Wait for the archiver and the sealer, and keep them out until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7420))",
                       (f"{schema}|archiver",))
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEAL_LOCK,))


# -- policies -----------------------------------------------------------------------------------

async def get_policy(store_url: str, tenant_id: str) -> RetentionPolicy:
    """The tenant's retention terms (the defaults when none were set)."""
    validate_identifier("tenant", tenant_id)
    async with connect(store_url, "dvt-retention") as (conn, config):
        return (await policies(conn, config.schema, tenant_id)).get(
            tenant_id, RetentionPolicy(tenant_id))


async def set_policy(store_url: str, tenant_id: str, *, hot_days: int | None = None,
                     cold_years: int | None = None) -> RetentionPolicy:
    """Set the tenant's terms (a term not given keeps its current value)."""
    validate_identifier("tenant", tenant_id)
    for value, top, what in ((hot_days, MAX_HOT_DAYS, "hot days"),
                             (cold_years, MAX_COLD_YEARS, "cold years")):
        low = 0 if what == "hot days" else 1
        if value is not None and not low <= value <= top:
            raise UsageError(f"{what} must be between {low} and {top}, not {value}")
    async with connect(store_url, "dvt-retention") as (conn, config):
        current = (await policies(conn, config.schema, tenant_id)).get(
            tenant_id, RetentionPolicy(tenant_id))
        new = RetentionPolicy(tenant_id, current.hot_days if hot_days is None else hot_days,
                              current.cold_years if cold_years is None else cold_years, True)
        await conn.execute(sql.SQL(
            "INSERT INTO {} (tenant_id, hot_days, cold_years) VALUES (%s, %s, %s)"
            " ON CONFLICT (tenant_id) DO UPDATE SET hot_days = excluded.hot_days,"
            " cold_years = excluded.cold_years, updated_at = clock_timestamp()").format(
                t(config.schema, "dvt_retention_policies")),
            (tenant_id, new.hot_days, new.cold_years))
        return new


async def policies(conn: Conn, schema: str, tenant_id: str | None = None
                   ) -> dict[str, RetentionPolicy]:
    """Every explicit policy (or the one tenant's), by tenant."""
    cur = await conn.execute(sql.SQL(
        "SELECT tenant_id, hot_days, cold_years FROM {} WHERE %(t)s::text IS NULL"
        " OR tenant_id = %(t)s").format(t(schema, "dvt_retention_policies")), {"t": tenant_id})
    return {r[0]: RetentionPolicy(r[0], int(r[1]), int(r[2]), True)
            for r in await cur.fetchall()}


# -- tombstones and checkpoints -----------------------------------------------------------------

async def write_tombstone(conn: Conn, schema: str, signer: Signer, *, kind: str, tenant_id: str,
                          actor: str, removed: dict[str, int],
                          runs: list[dict[str, Any]] | None = None,
                          checkpoints: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sign and store a tombstone (inside the caller's transaction); its summary."""
    cur = await conn.execute(sql.SQL("SELECT coalesce(max(tombstone_id), 0) FROM {}").format(
        t(schema, "dvt_audit_tombstones")))
    row = await cur.fetchone()
    number = int(row[0]) + 1 if row else 1
    created = datetime.now(UTC)
    stone = Tombstone(number, kind, tenant_id, created, signer.key_id, actor, removed,
                      runs or [], checkpoints)
    payload = stone.payload()
    await conn.execute(sql.SQL(
        "INSERT INTO {} (tombstone_id, tenant_id, kind, key_id, created_at, payload, signature)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)").format(t(schema, "dvt_audit_tombstones")),
        (number, tenant_id, kind, signer.key_id, created, payload.decode(),
         signer.sign(payload)))
    return tombstone_summary(json.loads(payload))


async def resign_without(conn: Conn, schema: str, tenant_id: str, signer: Signer
                         ) -> dict[str, Any] | None:
    """Re-sign every checkpoint from the first one naming the tenant on, without its heads.

    Each checkpoint names its predecessor's digest, so the ones after a rewritten checkpoint
    are re-signed too. None when no checkpoint names the tenant; else the range rewritten, the
    newest checkpoint's digest before and after, and how many heads were dropped.
    """
    table = t(schema, "dvt_audit_checkpoints")
    cur = await conn.execute(sql.SQL(
        "SELECT checkpoint_id, created_at, payload FROM {} ORDER BY checkpoint_id").format(table))
    rows = await cur.fetchall()
    first = next((i for i, r in enumerate(rows) if names_tenant(r[2], tenant_id)), None)
    if first is None:
        return None
    previous = payload_digest(rows[first - 1][2].encode()) if first else ""
    dropped = 0
    for number, created, payload in rows[first:]:
        new, gone = without_tenant(payload, tenant_id, previous, signer.key_id, created)
        dropped += gone
        await conn.execute(sql.SQL(
            "UPDATE {} SET key_id = %s, payload = %s, signature = %s WHERE checkpoint_id = %s"
        ).format(table), (signer.key_id, new.decode(), signer.sign(new), number))
        previous = payload_digest(new)
    return {"rewritten": [int(rows[first][0]), int(rows[-1][0])],
            "before": payload_digest(rows[-1][2].encode()), "after": previous,
            "headsDropped": dropped}


@dataclass
class TombstoneCheck:
    """What verify makes of the tombstones: good ones, expired runs they cover, findings."""

    erasures: list[dict[str, Any]] = field(default_factory=list)
    expired: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


async def check_tombstones(conn: Conn, schema: str, keyring: Keyring,
                           tenant_id: str | None) -> TombstoneCheck:
    """Check each tombstone's signature and row (of one tenant, or all)."""
    check = TombstoneCheck()
    cur = await conn.execute(sql.SQL(
        "SELECT tombstone_id, tenant_id, kind, key_id, payload, signature FROM {}"
        " WHERE %(t)s::text IS NULL OR tenant_id = %(t)s ORDER BY tombstone_id").format(
            t(schema, "dvt_audit_tombstones")), {"t": tenant_id})
    for number, tenant, kind, key_id, payload, signature in await cur.fetchall():
        problem = keyring.verify(key_id, payload.encode(), signature)
        data = json.loads(payload) if problem is None else {}
        if problem is None and (data.get("tombstone") != number or data.get("tenantId") != tenant
                                or data.get("kind") != kind or data.get("keyId") != key_id):
            problem = "its row does not match its signed payload"
        if problem is not None:
            what = "unknown-key" if problem.startswith("unknown key id") else "tombstone"
            check.findings.append(Finding(what, f"tombstone {number}: {problem}", tenant))
            continue
        check.erasures.append(tombstone_summary(data))
        for run_id, head in expired_heads(data).items():
            check.expired[(tenant, run_id)] = head
    return check


# -- cold cleanup -------------------------------------------------------------------------------

async def add_cleanup(conn: Conn, schema: str, root_url: str, paths: list[str],
                      batches: list[str]) -> None:
    """Record cold work to finish after the caller's transaction commits."""
    await conn.execute(sql.SQL(
        "INSERT INTO {} (root_url, paths, batches) VALUES (%s, %s::text[], %s::text[])").format(
            t(schema, "dvt_cold_cleanup")), (root_url, paths, batches))


async def pending_cleanups(conn: Conn, schema: str
                           ) -> list[tuple[int, str, list[str], list[str]]]:
    """Cold work recorded and not yet finished, oldest first."""
    cur = await conn.execute(sql.SQL(
        "SELECT cleanup_id, root_url, paths, batches FROM {} ORDER BY cleanup_id").format(
            t(schema, "dvt_cold_cleanup")))
    return [(int(i), r, list(p), list(b)) for i, r, p, b in await cur.fetchall()]


async def manifest_text(conn: Conn, schema: str, batch_id: str) -> str | None:
    """A committed batch's manifest as stored (None when the batch row is gone)."""
    cur = await conn.execute(sql.SQL(
        "SELECT manifest::text FROM {} WHERE batch_id = %s").format(
            t(schema, "dvt_archive_batches")), (batch_id,))
    row = await cur.fetchone()
    return None if row is None or row[0] is None else str(row[0])


async def finish_cleanup(conn: Conn, schema: str, cleanup_id: int) -> None:
    """Forget finished cold work."""
    await conn.execute(sql.SQL("DELETE FROM {} WHERE cleanup_id = %s").format(
        t(schema, "dvt_cold_cleanup")), (cleanup_id,))
