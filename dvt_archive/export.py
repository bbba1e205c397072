"""``dvt audit export``: a tenant's events of a period, from both tiers, with a manifest.

The hot rows and the archive registry are read in one REPEATABLE READ transaction, so an
archiver committing meanwhile cannot make an event appear twice or not at all: the export
sees the store either before its move or after it, and the files of committed batches never
change. The period is by persistedAt, ``[from, to)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql

from dvt_archive.files import (
    ColdRoot,
    Row,
    decode,
    encode,
    open_root,
    partition_of,
    sha256,
    table_of,
)
from dvt_engine.errors import StoreUnavailable, UsageError
from dvt_statestore_pg.config import parse_store_url
from dvt_statestore_pg.core import event_from_row

FORMATS = ("jsonl", "parquet")


@dataclass
class ExportReport:
    """What an export wrote."""

    rows: int = 0
    hot_rows: int = 0
    cold_rows: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)
    manifest: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-safe data, for ``--json`` output."""
        return {"rows": self.rows, "hotRows": self.hot_rows, "coldRows": self.cold_rows,
                "files": self.files, "manifest": self.manifest}


def _sql(schema: str) -> tuple[sql.Composed, sql.Composed]:
    names = {n: sql.Identifier(schema, n) for n in
             ("dvt_events", "dvt_archived_runs", "dvt_archive_batches")}
    hot = sql.SQL(
        "SELECT tenant_id, run_id, run_seq, persisted_at, event_type, event_id, idempotency_key,"
        " step_id, emitted_at, content_hash, envelope::text FROM {dvt_events}"
        " WHERE tenant_id = %s AND persisted_at >= %s AND persisted_at < %s"
    ).format(**names)
    cold = sql.SQL(
        "SELECT DISTINCT b.root_url, f.name FROM {dvt_archived_runs} a"
        " JOIN {dvt_archive_batches} b ON b.batch_id = a.batch_id AND b.state = 'committed'"
        " CROSS JOIN LATERAL unnest(a.files) AS f(name) WHERE a.tenant_id = %s"
    ).format(**names)
    return hot, cold


def _in_period(name: str, tenant_id: str, start: datetime, end: datetime) -> bool:
    """Whether a file's day partition can hold events of the period (by its path)."""
    day = date.fromisoformat("-".join(part.split("=", 1)[1] for part in name.split("/")[1:4]))
    prefix = partition_of(tenant_id, datetime(day.year, day.month, day.day, tzinfo=UTC))
    return name.startswith(prefix + "/") and start.date() <= day <= end.date()


async def export_events(
    store_url: str,
    tenant_id: str,
    start: datetime,
    end: datetime,
    out_url: str,
    *,
    fmt: str = "jsonl",
    **cold_options: Any,
) -> ExportReport:
    """Write the tenant's events persisted in ``[start, end)`` and a manifest under ``out_url``."""
    if fmt not in FORMATS:
        raise UsageError(f"--format is jsonl or parquet, not {fmt!r}")
    if start.tzinfo is None or end.tzinfo is None or end <= start:
        raise UsageError("the export period needs --from before --to (times with a zone)")
    hot, cold = await _collect(store_url, tenant_id, start, end, cold_options)
    rows = sorted(hot + cold, key=lambda r: (r[3], r[1], r[2]))
    report = ExportReport(rows=len(rows), hot_rows=len(hot), cold_rows=len(cold))
    out = open_root(out_url, **cold_options)
    name, data = _render(rows, fmt)
    await asyncio.to_thread(out.put, name, data)
    report.files.append({"path": name, "rows": len(rows), "bytes": len(data),
                         "sha256": sha256(data)})
    manifest = {"tenantId": tenant_id, "from": start.isoformat(), "to": end.isoformat(),
                "format": fmt, "rows": len(rows), "hotRows": len(hot), "coldRows": len(cold),
                "files": report.files, "createdAt": datetime.now(UTC).isoformat()}
    report.manifest = "manifest.json"
    await asyncio.to_thread(out.put, report.manifest,
                            json.dumps(manifest, sort_keys=True, indent=1).encode())
    return report


async def export_lines(store_url: str, tenant_id: str, start: datetime, end: datetime,
                       **cold_options: Any) -> AsyncIterator[bytes]:
    """The tenant's events of ``[start, end)`` as JSON lines, then one ``{"manifest": ...}``
    line with the counts and the sha256 of the event lines before it (the HTTP export).

    Both tiers are read before the first line is given, so a store or archive error is
    raised here rather than in the middle of a response.
    """
    if start.tzinfo is None or end.tzinfo is None or end <= start:
        raise UsageError("the export period needs from before to (times with a zone)")
    hot, cold = await _collect(store_url, tenant_id, start, end, cold_options)
    rows = sorted(hot + cold, key=lambda r: (r[3], r[1], r[2]))
    return _lines(rows, {"tenantId": tenant_id, "from": start.isoformat(),
                         "to": end.isoformat(), "format": "jsonl", "rows": len(rows),
                         "hotRows": len(hot), "coldRows": len(cold)})


async def _lines(rows: list[Row], manifest: dict[str, Any]) -> AsyncIterator[bytes]:
    digest = hashlib.sha256()
    size = 0
    for row in rows:
        line = (event_from_row(row[2], row[3], row[10]).model_dump_json(exclude_none=True)
                + "\n").encode()
        digest.update(line)
        size += len(line)
        yield line
    manifest.update({"bytes": size, "sha256": digest.hexdigest(),
                     "createdAt": datetime.now(UTC).isoformat()})
    yield (json.dumps({"manifest": manifest}, sort_keys=True) + "\n").encode()


async def _collect(store_url: str, tenant_id: str, start: datetime, end: datetime,
                   cold_options: dict[str, Any]) -> tuple[list[Row], list[Row]]:
    """The tenant's hot and cold rows of the period, read as of one snapshot."""
    config = parse_store_url(store_url)
    hot_query, cold_query = _sql(config.schema)
    try:
        conn = await psycopg.AsyncConnection.connect(config.conninfo)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL at {config.redacted()}") from exc
    async with conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        async with conn.transaction():
            cur = await conn.execute(hot_query, (tenant_id, start, end))
            hot: list[Row] = [tuple(row) for row in await cur.fetchall()]
            cur = await conn.execute(cold_query, (tenant_id,))
            cold_files = [(root, name) for root, name in await cur.fetchall()
                          if _in_period(name, tenant_id, start, end)]
    cold = await asyncio.to_thread(_read_cold, cold_files, tenant_id, start, end, cold_options)
    return hot, cold


def _read_cold(files: list[tuple[str, str]], tenant_id: str, start: datetime, end: datetime,
               options: dict[str, Any]) -> list[Row]:
    roots: dict[str, ColdRoot] = {}
    rows: list[Row] = []
    for root_url, name in files:
        root = roots.get(root_url) or roots.setdefault(root_url, open_root(root_url, **options))
        table = decode(root.get(name), where=name)
        for row in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
            if row[0] == tenant_id and start <= row[3] < end:
                rows.append(tuple(row))
    return rows


def _render(rows: list[Row], fmt: str) -> tuple[str, bytes]:
    if fmt == "parquet":
        return "events.parquet", encode(table_of(rows))
    lines = [event_from_row(row[2], row[3], row[10]).model_dump_json(exclude_none=True)
             for row in rows]
    return "events.jsonl", "".join(line + "\n" for line in lines).encode()
