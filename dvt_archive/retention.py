"""``dvt retention apply``: each tenant's terms applied to its log, hot and cold.

A pass (``apply_retention``, which a host can schedule):

1. finishes cold work an interrupted purge or pass left recorded (dvt_cold_cleanup);
2. archives the terminal runs idle past their tenant's hot term (the archiver, per-tenant
   cutoffs);
3. expires the archived runs past their tenant's cold term: a run goes whole, when every day
   partition holding its events is before the term's first day (``cold_cutoff``) and it has no
   hot events. In one transaction (archiver and sealer locked out) its registry rows, chain
   rows, head and run row are deleted, the manifests of its batches rewritten without it, a
   tombstone per tenant signed with the expired runs' heads (so verify tells expiry from
   tampering), and the files no remaining run needs recorded for deletion;
4. deletes those files and rewrites the manifest objects, then forgets the recorded work.

A file (one tenant, one day, one batch) goes when every run with events in it has expired, so
day partitions go whole; one whose run continues on a later day waits for that day. A crash
after step 3's commit leaves the files recorded; the next pass deletes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from dvt_archive.archiver import archive_runs
from dvt_archive.purge import TERMINAL, finish_cleanups, rewrite_manifest
from dvt_engine.audit_keys import Signer
from dvt_engine.erasure import DEFAULT_COLD_YEARS, DEFAULT_HOT_DAYS, RetentionPolicy, cold_cutoff
from dvt_engine.errors import ErasureRefused
from dvt_statestore_pg import erasure as db
from dvt_statestore_pg.erasure import Conn, t

Stage = Callable[[str], None]
RunKey = tuple[str, str]


@dataclass
class RetentionReport:
    """What a retention pass did (or, with ``dry_run``, would do)."""

    archived: dict[str, Any] = field(default_factory=dict)
    expired_runs: int = 0
    expired_events: int = 0
    files: int = 0
    partitions: int = 0
    manifests_rewritten: int = 0
    manifests_deleted: int = 0
    tombstones: list[dict[str, Any]] = field(default_factory=list)
    finished_cleanups: int = 0
    dry_run: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON data."""
        return {"archived": self.archived, "expiredRuns": self.expired_runs,
                "expiredEvents": self.expired_events, "files": self.files,
                "partitions": self.partitions, "manifestsRewritten": self.manifests_rewritten,
                "manifestsDeleted": self.manifests_deleted, "tombstones": self.tombstones,
                "finishedCleanups": self.finished_cleanups, "dryRun": self.dry_run,
                "seconds": round(self.seconds, 3)}


@dataclass
class _Segment:
    tenant_id: str
    run_id: str
    first_seq: int
    last_seq: int
    batch_id: str
    root_url: str
    files: list[str]


async def apply_retention(store_url: str, cold_url: str, *, signer: Signer | None = None,
                          actor: str = "retention", now: datetime | None = None,
                          dry_run: bool = False, tenant_id: str | None = None,
                          on_stage: Stage | None = None, **cold_options: Any) -> RetentionReport:
    """Archive runs past their hot term and delete cold data past its cold term.

    ``signer`` signs the tombstones; it is required when expiring runs the audit sealer has
    sealed (ERASURE_REFUSED otherwise). ``on_stage`` is called with each of
    ``dvt_archive.purge.STAGES`` (the expiry's rows deleted, then committed).
    """
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    report = RetentionReport(dry_run=dry_run)
    stage = on_stage or (lambda _name: None)
    async with db.connect(store_url, "dvt-retention") as (conn, config):
        terms = await db.policies(conn, config.schema, tenant_id)
        if not dry_run:
            report.finished_cleanups = await finish_cleanups(conn, config.schema, cold_options)
    archived = await archive_runs(
        store_url, cold_url, older_than=timedelta(days=DEFAULT_HOT_DAYS), dry_run=dry_run,
        tenant_id=tenant_id, now=now,
        older_than_of={k: timedelta(days=p.hot_days) for k, p in terms.items()}, **cold_options)
    report.archived = archived.to_dict()
    async with db.connect(store_url, "dvt-retention") as (conn, config):
        async with conn.transaction():
            await _expire(conn, config.schema, terms, now.date(), tenant_id, signer, actor,
                          report, dry_run)
            if dry_run:
                raise psycopg.Rollback  # psycopg ends the block, rolled back, without an error
            stage("removed")
        if not dry_run:
            stage("committed")
            await finish_cleanups(conn, config.schema, cold_options)
    report.seconds = time.perf_counter() - started
    return report


async def _expire(conn: Conn, schema: str, terms: dict[str, RetentionPolicy], today: date,
                  tenant_id: str | None, signer: Signer | None, actor: str,
                  report: RetentionReport, dry_run: bool) -> None:
    await db.lock_removals(conn, schema)
    expired = await _expired_runs(conn, schema, terms, today, tenant_id)
    if not expired:
        return
    segments = await _segments_of_batches(conn, schema, expired)
    gone = [s for s in segments if (s.tenant_id, s.run_id) in expired]
    needed = {(s.root_url, f) for s in segments if (s.tenant_id, s.run_id) not in expired
              for f in s.files}
    doomed = sorted({(s.root_url, f) for s in gone for f in s.files} - needed)
    heads = await _heads(conn, schema, expired)
    if heads and signer is None and not dry_run:
        raise ErasureRefused("expired runs are sealed: a retention pass that removes them signs"
                             " a tombstone; give the audit signing key",
                             details={"runs": len(heads)})
    report.expired_runs = len(expired)
    report.expired_events = sum(s.last_seq - s.first_seq + 1 for s in gone)
    report.files = len(doomed)
    report.partitions = len({(root, f.rsplit("/", 1)[0]) for root, f in doomed})
    keys = sorted(expired)
    tenants, runs = [k[0] for k in keys], [k[1] for k in keys]
    await conn.execute(sql.SQL("SELECT {}(%s::text[], %s::text[])").format(
        t(schema, "dvt_lock_runs")), (tenants, runs))
    for table in ("dvt_outbox", "dvt_audit_chain", "dvt_audit_heads", "dvt_archived_runs",
                  "dvt_admission_slots", "dvt_runs"):
        await conn.execute(sql.SQL(
            "DELETE FROM {} x USING unnest(%s::text[], %s::text[]) AS u(t, r)"
            " WHERE x.tenant_id = u.t AND x.run_id = u.r").format(t(schema, table)),
            (tenants, runs))
    doomed_set = set(doomed)
    batches = sorted({(s.root_url, s.batch_id) for s in gone})
    for root_url, batch_id in batches:
        await _rewrite_batch(conn, schema, root_url, batch_id, doomed_set, expired, report)
    if signer is not None:
        by_tenant: dict[str, list[_Segment]] = {}
        for s in gone:
            by_tenant.setdefault(s.tenant_id, []).append(s)
        for tenant, segs in sorted(by_tenant.items()):
            run_heads = [{"runId": r, "seq": seq, "chainHash": h}
                         for (tt, r), (seq, h) in sorted(heads.items()) if tt == tenant]
            files = {(s.root_url, f) for s in segs for f in s.files} & doomed_set
            removed = {"runs": len({s.run_id for s in segs}),
                       "events": sum(s.last_seq - s.first_seq + 1 for s in segs),
                       "objects": len(files)}
            report.tombstones.append(await db.write_tombstone(
                conn, schema, signer, kind="retention", tenant_id=tenant, actor=actor,
                removed=removed, runs=run_heads))
    for root_url in sorted({root for root, _ in batches}):
        await db.add_cleanup(conn, schema, root_url,
                             [f for root, f in doomed if root == root_url],
                             [b for root, b in batches if root == root_url])


async def _expired_runs(conn: Conn, schema: str, terms: dict[str, RetentionPolicy],
                        today: date, tenant_id: str | None) -> set[RunKey]:
    """Archived, terminal runs with no hot events whose every day partition is past the term."""
    cutoffs = sorted((k, cold_cutoff(today, p.cold_years)) for k, p in terms.items())
    cur = await conn.execute(sql.SQL(
        "SELECT d.tenant_id, d.run_id FROM ("
        "  SELECT a.tenant_id, a.run_id, max(make_date(m[1]::int, m[2]::int, m[3]::int)) AS day"
        "  FROM {archived} a CROSS JOIN LATERAL unnest(a.files) AS f(path)"
        "  CROSS JOIN LATERAL regexp_match(f.path,"
        "    'year=(\\d{{4}})/month=(\\d{{2}})/day=(\\d{{2}})') AS m"
        "  WHERE %(tenant)s::text IS NULL OR a.tenant_id = %(tenant)s"
        "  GROUP BY a.tenant_id, a.run_id) d"
        " LEFT JOIN unnest(%(pt)s::text[], %(pd)s::date[]) AS p(t, cutoff) ON p.t = d.tenant_id"
        " JOIN {runs} r ON r.tenant_id = d.tenant_id AND r.run_id = d.run_id"
        " WHERE d.day < coalesce(p.cutoff, %(default)s::date) AND r.status = ANY(%(terminal)s)"
        " AND NOT EXISTS (SELECT 1 FROM {events} e WHERE e.tenant_id = d.tenant_id"
        "                 AND e.run_id = d.run_id)").format(
            archived=t(schema, "dvt_archived_runs"), runs=t(schema, "dvt_runs"),
            events=t(schema, "dvt_events")),
        {"tenant": tenant_id, "pt": [k for k, _ in cutoffs], "pd": [c for _, c in cutoffs],
         "default": cold_cutoff(today, DEFAULT_COLD_YEARS), "terminal": list(TERMINAL)})
    return {(r[0], r[1]) for r in await cur.fetchall()}


async def _segments_of_batches(conn: Conn, schema: str, expired: set[RunKey]) -> list[_Segment]:
    """Every segment of every batch holding an expired run (other runs share its files)."""
    keys = sorted(expired)
    cur = await conn.execute(sql.SQL(
        "SELECT a.tenant_id, a.run_id, a.first_seq, a.last_seq, a.batch_id, b.root_url, a.files"
        " FROM {archived} a JOIN {batches} b ON b.batch_id = a.batch_id"
        " WHERE a.batch_id IN (SELECT x.batch_id FROM {archived} x"
        "   JOIN unnest(%s::text[], %s::text[]) AS u(t, r) ON x.tenant_id = u.t AND x.run_id = u.r)"
    ).format(archived=t(schema, "dvt_archived_runs"), batches=t(schema, "dvt_archive_batches")),
        ([k[0] for k in keys], [k[1] for k in keys]))
    return [_Segment(r[0], r[1], int(r[2]), int(r[3]), r[4], r[5], list(r[6]))
            for r in await cur.fetchall()]


async def _heads(conn: Conn, schema: str, expired: set[RunKey]) -> dict[RunKey, tuple[int, str]]:
    keys = sorted(expired)
    cur = await conn.execute(sql.SQL(
        "SELECT h.tenant_id, h.run_id, h.last_seq, h.chain_hash FROM {} h"
        " JOIN unnest(%s::text[], %s::text[]) AS u(t, r) ON h.tenant_id = u.t AND h.run_id = u.r"
    ).format(t(schema, "dvt_audit_heads")), ([k[0] for k in keys], [k[1] for k in keys]))
    return {(r[0], r[1]): (int(r[2]), r[3]) for r in await cur.fetchall()}


async def _rewrite_batch(conn: Conn, schema: str, root_url: str, batch_id: str,
                         doomed: set[tuple[str, str]], expired: set[RunKey],
                         report: RetentionReport) -> None:
    """Take expired files and runs out of a batch's row and manifest (the row goes when no
    data file is left)."""
    table = t(schema, "dvt_archive_batches")
    cur = await conn.execute(sql.SQL(
        "SELECT files, manifest::text FROM {} WHERE batch_id = %s").format(table), (batch_id,))
    row = await cur.fetchone()
    if row is None:
        return
    files, manifest = list(row[0]), row[1]
    kept = [f for f in files if (root_url, f) not in doomed]
    if all(f.startswith("_manifests/") for f in kept):
        await conn.execute(sql.SQL("DELETE FROM {} WHERE batch_id = %s").format(table),
                           (batch_id,))
        report.manifests_deleted += 1
        return
    text = None
    if manifest is not None:
        text = rewrite_manifest(manifest, lambda p: (root_url, p) not in doomed,
                                lambda r: (r.get("tenantId"), r.get("runId")) not in expired)
        report.manifests_rewritten += 1
    await conn.execute(sql.SQL(
        "UPDATE {} SET files = %s::text[], manifest = coalesce(%s::json, manifest)"
        " WHERE batch_id = %s").format(table), (kept, text, batch_id))


async def show_policy(store_url: str, tenant_id: str) -> RetentionPolicy:
    """The tenant's terms (the defaults when none were set)."""
    return await db.get_policy(store_url, tenant_id)


__all__ = ["DEFAULT_COLD_YEARS", "RetentionReport", "apply_retention", "show_policy"]
