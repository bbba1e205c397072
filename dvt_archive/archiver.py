"""The archiver: events of finished, idle runs move from PostgreSQL to Parquet files.

One pass (``archive_runs``, behind ``dvt archive run``) takes the terminal runs whose last
append is older than the threshold, a page at a time, and for each page (a *batch*):

1. records the batch as ``writing`` with every file it is about to write (committed first);
2. writes one Parquet file per tenant and UTC day (zstd), then reads each back and checks its
   sha256 and its rows against what was written;
3. writes the manifest (rows, bytes, sha256 per file; each run's runSeq range);
4. in one transaction, under the runs' writer locks: deletes the runs' events (and their
   delivered outbox rows) from the hot log, stores each run's snapshot at its last runSeq,
   registers the runs' segments and marks the batch ``committed``.

A crash anywhere loses nothing and duplicates nothing: before step 4 commits the events are
still hot and no reader looks at the batch's files; the next pass deletes them (they are
listed in the batch row) and starts over. After it, the events are read from the files the
registry names. Runs' rows in dvt_runs stay, so status and listing answer as before. One
archiver works on a store at a time (a session advisory lock; ARCHIVE_BUSY otherwise).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from dvt_archive.files import (
    ColdRoot,
    Row,
    data_file,
    decode,
    encode,
    manifest_file,
    open_root,
    sha256,
    table_of,
)
from dvt_engine.errors import ArchiveBusy, ArchiveCorrupt, StoreUnavailable, UsageError
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.projector import apply
from dvt_statestore_pg.config import parse_store_url
from dvt_statestore_pg.core import event_with_seq

#: Runs per batch (one Parquet file per tenant and day of each batch).
BATCH_RUNS = 1000
#: The points of a pass, in order, at which ``on_stage`` is called (and a crash is tested).
STAGES = ("journaled", "written", "verified", "manifested", "deleted", "committed")

Stage = Callable[[str], None]


@dataclass
class ArchiveReport:
    """What a pass did (or, with ``dry_run``, would do)."""

    runs: int = 0
    events: int = 0
    batches: int = 0
    files: int = 0
    bytes: int = 0
    #: Runs left hot because the outbox still holds undelivered events of theirs.
    held_by_outbox: int = 0
    #: Batches of an interrupted pass whose files this pass deleted.
    cleaned: int = 0
    dry_run: bool = False
    cutoff: str = ""
    root: str = ""
    seconds: float = 0.0
    manifests: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-safe data, for ``--json`` output."""
        return {"runs": self.runs, "events": self.events, "batches": self.batches,
                "files": self.files, "bytes": self.bytes, "heldByOutbox": self.held_by_outbox,
                "cleaned": self.cleaned, "dryRun": self.dry_run, "cutoff": self.cutoff,
                "root": self.root, "seconds": round(self.seconds, 3),
                "manifests": self.manifests}


@dataclass
class _Run:
    tenant_id: str
    run_id: str
    last_seq: int
    snapshot_seq: int
    snapshot: str
    rows: list[Row] = field(default_factory=list)


class _Sql:
    def __init__(self, schema: str) -> None:
        names = {n: sql.Identifier(schema, n) for n in (
            "dvt_runs", "dvt_events", "dvt_outbox", "dvt_archive_batches", "dvt_archived_runs",
            "dvt_lock_runs")}
        self.schema = schema

        def fmt(text: str) -> sql.Composed:
            return sql.SQL(text).format(**names)

        # One scan per pass: the runs still to archive (already archived ones have no hot
        # events; the probe is an index lookup on the log's primary key).
        self.candidates = fmt(
            "SELECT r.tenant_id, r.run_id FROM {dvt_runs} r"
            " LEFT JOIN unnest(%(pt)s::text[], %(pc)s::timestamptz[]) AS p(t, cutoff)"
            " ON p.t = r.tenant_id"
            " WHERE r.status IN ('COMPLETED', 'FAILED', 'CANCELLED')"
            " AND r.updated_at < coalesce(p.cutoff, %(cutoff)s)"
            " AND (%(tenant)s::text IS NULL OR r.tenant_id = %(tenant)s)"
            " AND EXISTS (SELECT 1 FROM {dvt_events} e"
            "             WHERE e.tenant_id = r.tenant_id AND e.run_id = r.run_id)"
            " ORDER BY r.updated_at, r.tenant_id, r.run_id")
        self.page = fmt(
            "SELECT r.tenant_id, r.run_id, r.last_seq, r.snapshot_seq, r.snapshot::text"
            " FROM {dvt_runs} r"
            " JOIN unnest(%s::text[], %s::text[]) AS u(t, r)"
            " ON r.tenant_id = u.t AND r.run_id = u.r"
            " WHERE r.status IN ('COMPLETED', 'FAILED', 'CANCELLED')")
        self.held = fmt(
            "SELECT DISTINCT o.tenant_id, o.run_id FROM {dvt_outbox} o"
            " JOIN unnest(%s::text[], %s::text[]) AS u(t, r)"
            " ON o.tenant_id = u.t AND o.run_id = u.r WHERE o.delivered_at IS NULL")
        self.rows = fmt(
            "SELECT e.tenant_id, e.run_id, e.run_seq, e.persisted_at, e.event_type, e.event_id,"
            " e.idempotency_key, e.step_id, e.emitted_at, e.content_hash, e.envelope::text"
            " FROM {dvt_events} e JOIN unnest(%s::text[], %s::text[], %s::bigint[])"
            " AS u(t, r, last) ON e.tenant_id = u.t AND e.run_id = u.r AND e.run_seq <= u.last"
            " ORDER BY e.tenant_id, e.run_id, e.run_seq")
        self.pending = fmt(
            "SELECT batch_id, root_url, files FROM {dvt_archive_batches}"
            " WHERE state = 'writing' ORDER BY created_at")
        self.forget = fmt("DELETE FROM {dvt_archive_batches} WHERE batch_id = %s"
                          " AND state = 'writing'")
        self.journal = fmt(
            "INSERT INTO {dvt_archive_batches} (batch_id, root_url, state, files)"
            " VALUES (%s, %s, 'writing', %s::text[])")
        self.lock_runs = fmt("SELECT {dvt_lock_runs}(%s::text[], %s::text[])")
        self.count = fmt(
            "SELECT count(*) FROM {dvt_events} e JOIN unnest(%s::text[], %s::text[],"
            " %s::bigint[], %s::bigint[]) AS u(t, r, f, l)"
            " ON e.tenant_id = u.t AND e.run_id = u.r AND e.run_seq BETWEEN u.f AND u.l")
        self.delete_outbox = fmt(
            "DELETE FROM {dvt_outbox} o USING unnest(%s::text[], %s::text[], %s::bigint[],"
            " %s::bigint[]) AS u(t, r, f, l) WHERE o.tenant_id = u.t AND o.run_id = u.r"
            " AND o.run_seq BETWEEN u.f AND u.l AND o.delivered_at IS NOT NULL")
        self.delete_events = fmt(
            "DELETE FROM {dvt_events} e USING unnest(%s::text[], %s::text[], %s::bigint[],"
            " %s::bigint[]) AS u(t, r, f, l) WHERE e.tenant_id = u.t AND e.run_id = u.r"
            " AND e.run_seq BETWEEN u.f AND u.l")
        # Snapshots travel as one JSON array (json_array_elements keeps each element's text):
        # a json[] parameter is escaped element by element with a regular expression, which
        # took half of a pass's time.
        self.snapshots = fmt(
            "UPDATE {dvt_runs} r SET snapshot = s.s, snapshot_seq = u.l"
            " FROM unnest(%s::text[], %s::text[], %s::bigint[]) WITH ORDINALITY AS u(t, r, l, n)"
            " JOIN json_array_elements(%s::json) WITH ORDINALITY AS s(s, n) USING (n)"
            " WHERE r.tenant_id = u.t AND r.run_id = u.r AND r.snapshot_seq < u.l")
        self.register = fmt(
            "INSERT INTO {dvt_archived_runs} (tenant_id, run_id, first_seq, last_seq, batch_id,"
            " files) SELECT u.t, u.r, u.f, u.l, %s, string_to_array(u.files, E'\\n')"
            " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::text[])"
            " AS u(t, r, f, l, files)")
        self.commit = fmt(
            "UPDATE {dvt_archive_batches} SET state = 'committed', manifest = %s::json,"
            " committed_at = clock_timestamp() WHERE batch_id = %s AND state = 'writing'")


def parse_age(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m`` or ``45s`` as a duration (``0s`` archives every finished run)."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    value, unit = text[:-1], text[-1:]
    if unit not in units or not value.isdigit():
        raise UsageError(f"--older-than takes a number and d, h, m or s (e.g. 90d), not {text!r}")
    return timedelta(seconds=int(value) * units[unit])


async def archive_runs(
    store_url: str,
    cold_url: str,
    *,
    older_than: timedelta = timedelta(days=90),
    dry_run: bool = False,
    tenant_id: str | None = None,
    older_than_of: Mapping[str, timedelta] | None = None,
    batch_runs: int = BATCH_RUNS,
    now: datetime | None = None,
    on_stage: Stage | None = None,
    lock_wait: float = 0.0,
    **cold_options: Any,
) -> ArchiveReport:
    """Move the events of terminal runs idle for ``older_than`` to Parquet under ``cold_url``.

    ``lock_wait`` is how long to wait for another archiver (or the session of one that
    died and is not yet gone) before ARCHIVE_BUSY; ``on_stage`` is called with each of
    STAGES as a batch reaches it. ``older_than_of`` overrides ``older_than`` per tenant (the
    retention policies' hot terms).
    """
    started = time.perf_counter()
    root = open_root(cold_url, **cold_options)
    cutoff = (now or datetime.now(UTC)) - older_than
    report = ArchiveReport(dry_run=dry_run, cutoff=cutoff.isoformat(), root=root.url)
    config = parse_store_url(store_url)
    q = _Sql(config.schema)
    stage = on_stage or (lambda _name: None)
    try:
        conn = await psycopg.AsyncConnection.connect(
            config.conninfo, autocommit=True, application_name="dvt-archiver")
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL at {config.redacted()}") from exc
    async with conn:
        await _lock_archiver(conn, config.schema, lock_wait)
        if not dry_run:
            report.cleaned = await _clean_interrupted(conn, q, cold_options)
        now_at = cutoff + older_than
        terms = sorted((older_than_of or {}).items())
        cur = await conn.execute(q.candidates, {
            "cutoff": cutoff, "tenant": tenant_id, "pt": [k for k, _ in terms],
            "pc": [now_at - age for _, age in terms]})
        candidates = await cur.fetchall()
        for start in range(0, len(candidates), batch_runs):
            chunk = candidates[start:start + batch_runs]
            cur = await conn.execute(q.page, ([c[0] for c in chunk], [c[1] for c in chunk]))
            runs = await _load(conn, q, await cur.fetchall(), report)
            if not runs:
                continue
            report.runs += len(runs)
            report.events += sum(len(r.rows) for r in runs)
            if dry_run:
                continue
            await _archive_batch(conn, q, root, runs, report, stage)
    report.seconds = time.perf_counter() - started
    return report


async def _lock_archiver(conn: psycopg.AsyncConnection[Any], schema: str, wait: float) -> None:
    """Hold the store's archiver lock for the session (released when it ends, even by a crash)."""
    key = (f"{schema}|archiver",)
    busy = ArchiveBusy("another archiver is working on this store", details={"schema": schema})
    if wait <= 0:
        cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 7420))", key)
        row = await cur.fetchone()
        if not row or not row[0]:
            raise busy
        return
    timeout = sql.Literal(f"{int(wait * 1000)}ms")
    await conn.execute(sql.SQL("SET lock_timeout = {}").format(timeout))
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 7420))", key)
    except psycopg.errors.LockNotAvailable:
        raise busy from None
    finally:
        await conn.execute("RESET lock_timeout")


async def _clean_interrupted(conn: psycopg.AsyncConnection[Any], q: _Sql,
                             cold_options: dict[str, Any]) -> int:
    """Delete the files of batches an interrupted pass left ``writing``, then their rows."""
    cur = await conn.execute(q.pending)
    cleaned = 0
    for batch_id, root_url, files in await cur.fetchall():
        root = open_root(root_url, **cold_options)
        for name in files:
            await asyncio.to_thread(root.remove, name)
        await conn.execute(q.forget, (batch_id,))
        cleaned += 1
    return cleaned


async def _load(conn: psycopg.AsyncConnection[Any], q: _Sql, page: list[Any],
                report: ArchiveReport) -> list[_Run]:
    """The page's runs that have hot events and no undelivered outbox rows, with their rows."""
    runs = {(t, r): _Run(t, r, int(last), int(seq), snap) for t, r, last, seq, snap in page}
    cur = await conn.execute(q.held, ([k[0] for k in runs], [k[1] for k in runs]))
    for key in await cur.fetchall():
        runs.pop((key[0], key[1]), None)
        report.held_by_outbox += 1
    cur = await conn.execute(q.rows, ([r.tenant_id for r in runs.values()],
                                      [r.run_id for r in runs.values()],
                                      [r.last_seq for r in runs.values()]))
    for row in await cur.fetchall():
        runs[(row[0], row[1])].rows.append(tuple(row))
    loaded = [run for run in runs.values() if run.rows]
    for run in loaded:
        seqs = [row[2] for row in run.rows]
        if seqs != list(range(seqs[0], run.last_seq + 1)):
            raise ArchiveCorrupt("a run's hot log has a gap; it is not archived",
                                 details={"runId": run.run_id})
    return loaded


async def _archive_batch(conn: psycopg.AsyncConnection[Any], q: _Sql, root: ColdRoot,
                         runs: list[_Run], report: ArchiveReport, stage: Stage) -> None:
    batch_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
    by_file: dict[str, list[Row]] = {}
    files_of: dict[tuple[str, str], set[str]] = {}
    for run in runs:
        for row in run.rows:
            name = data_file(run.tenant_id, row[3].astimezone(UTC), batch_id)
            by_file.setdefault(name, []).append(row)
            files_of.setdefault((run.tenant_id, run.run_id), set()).add(name)
    manifest_name = manifest_file(batch_id)
    await conn.execute(q.journal, (batch_id, root.url, [*sorted(by_file), manifest_name]))
    stage("journaled")

    entries: list[dict[str, Any]] = []
    written: dict[str, tuple[bytes, Any]] = {}
    for name, rows in sorted(by_file.items()):
        table = table_of(rows)
        data = encode(table)
        await asyncio.to_thread(root.put, name, data)
        written[name] = (data, table)
        entries.append({"path": name, "rows": len(rows), "bytes": len(data),
                        "sha256": sha256(data)})
    stage("written")
    for name, (data, table) in written.items():
        back = await asyncio.to_thread(root.get, name)
        if sha256(back) != sha256(data) or not decode(back, where=name).equals(table):
            raise ArchiveCorrupt("an archive file read back differs from what was written",
                                 details={"file": name, "root": root.url})
    stage("verified")

    segments = [(r.tenant_id, r.run_id, int(r.rows[0][2]), r.last_seq,
                 sorted(files_of[(r.tenant_id, r.run_id)])) for r in runs]
    manifest = {
        "batchId": batch_id, "root": root.url, "format": "parquet", "compression": "zstd",
        "createdAt": datetime.now(UTC).isoformat(),
        "rows": sum(int(e["rows"]) for e in entries),
        "files": entries,
        "runs": [{"tenantId": t, "runId": r, "firstSeq": f, "lastSeq": last, "files": names}
                 for t, r, f, last, names in segments],
    }
    manifest_text = json.dumps(manifest, sort_keys=True, indent=1)
    await asyncio.to_thread(root.put, manifest_name, manifest_text.encode())
    stage("manifested")

    # Each run's snapshot at its last runSeq, as readers saw it: the stored one with the
    # events after it applied. Those events leave the hot log, so the stored one must cover them.
    # Most finished runs' stored snapshot is already at their last runSeq.
    behind = [r for r in runs if r.snapshot_seq < r.last_seq]
    snapshots = [apply(RunSnapshot.model_validate_json(r.snapshot),
                       [event_with_seq(row[10], row[2]) for row in r.rows
                        if row[2] > r.snapshot_seq]).model_dump_json() for r in behind]
    tenants = [s[0] for s in segments]
    run_ids = [s[1] for s in segments]
    firsts = [s[2] for s in segments]
    lasts = [s[3] for s in segments]
    async with conn.transaction():
        await conn.execute(q.lock_runs, (tenants, run_ids))
        cur = await conn.execute(q.count, (tenants, run_ids, firsts, lasts))
        counted = await cur.fetchone()
        expected = sum(last - first + 1 for first, last in zip(firsts, lasts, strict=True))
        if counted is None or counted[0] != expected:
            raise ArchiveCorrupt("the hot log changed under the archiver; nothing was moved",
                                 details={"batch": batch_id})
        await conn.execute(q.delete_outbox, (tenants, run_ids, firsts, lasts))
        await conn.execute(q.delete_events, (tenants, run_ids, firsts, lasts))
        await conn.execute(q.snapshots, ([r.tenant_id for r in behind],
                                         [r.run_id for r in behind],
                                         [r.last_seq for r in behind],
                                         "[" + ",".join(snapshots) + "]"))
        await conn.execute(q.register, (batch_id, tenants, run_ids, firsts, lasts,
                                        ["\n".join(s[4]) for s in segments]))
        await conn.execute(q.commit, (manifest_text, batch_id))
        stage("deleted")
    stage("committed")
    report.batches += 1
    report.files += len(entries)
    report.bytes += sum(int(e["bytes"]) for e in entries)
    report.manifests.append(manifest_name)
