"""``dvt tenant purge``: remove a tenant's data everywhere, leaving a signed tombstone.

One transaction, holding the archiver's and the sealer's locks and the tenant runs' writer
locks, deletes every row of the tenant (runs, events, outbox, webhooks and deliveries, API
keys, idempotency records, limits, admission, budget crossings, archive registry, audit chain
and heads, retention policy and retention tombstones, and any other table of the schema with a
``tenant_id`` column), the plans only that tenant references, rewrites the archive manifests
that listed its files, re-signs the checkpoints without its heads, signs the tombstone and
records the cold objects still to delete (the tenant's whole prefix under every cold root).
After the commit those objects are deleted and the manifests rewritten; a crash in between
leaves the work recorded (dvt_cold_cleanup) and the next purge or retention pass finishes it.

Plans are shared and content-addressed: a plan's bytes go with the tenant only when no other
tenant stored it or started a run of it (a plan stored without a tenant, by ``dvt run`` on a
plan file, belongs to no tenant and stays).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from dvt_archive.files import manifest_file, normalize_root, open_root, tenant_prefix
from dvt_engine.audit_keys import Signer
from dvt_engine.errors import ErasureRefused, UsageError
from dvt_engine.identifiers import validate_identifier
from dvt_statestore_pg import erasure as db
from dvt_statestore_pg.erasure import Conn, t

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
#: Tables emptied of the tenant in this order (foreign keys point backwards in it); any other
#: table with a tenant_id column is emptied after them.
ORDERED = ("dvt_outbox", "dvt_events", "dvt_webhook_deliveries", "dvt_webhooks",
           "dvt_archived_runs", "dvt_admission_queue", "dvt_admission_slots",
           "dvt_admission_buckets", "dvt_tenant_limits", "dvt_budget_crossings",
           "dvt_audit_chain", "dvt_audit_heads", "dvt_api_keys", "dvt_idempotency_keys",
           "dvt_tenant_plans", "dvt_runs", "dvt_retention_policies")
#: Rows that outlive the purge on purpose: the tombstone itself (its retention ones go).
KEPT = ("dvt_audit_tombstones",)

Stage = Callable[[str], None]
#: The points of a purge (and of a retention expiry) at which ``on_stage`` is called: the
#: rows are deleted and the transaction not yet committed; it committed, no object deleted yet.
STAGES = ("removed", "committed")


@dataclass
class PurgeReport:
    """What a purge removed (or, with ``dry_run``, would remove)."""

    tenant_id: str
    removed: dict[str, int] = field(default_factory=dict)
    objects: int = 0
    manifests_rewritten: int = 0
    manifests_deleted: int = 0
    checkpoints: dict[str, Any] | None = None
    tombstone: dict[str, Any] | None = None
    finished_cleanups: int = 0
    dry_run: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON data."""
        return {"tenantId": self.tenant_id, "removed": self.removed, "objects": self.objects,
                "manifestsRewritten": self.manifests_rewritten,
                "manifestsDeleted": self.manifests_deleted, "checkpoints": self.checkpoints,
                "tombstone": self.tombstone, "finishedCleanups": self.finished_cleanups,
                "dryRun": self.dry_run, "seconds": round(self.seconds, 3)}


async def purge_tenant(store_url: str, tenant_id: str, signer: Signer | None, *, actor: str,
                       roles: Collection[str], dry_run: bool = False,
                       roots: Sequence[str] = (), on_stage: Stage | None = None,
                       **cold_options: Any) -> PurgeReport:
    """Remove every row and cold object of ``tenant_id``; sign a tombstone saying so.

    ``roles`` are the actor's (``admin`` is required); ``roots`` are cold roots to sweep
    besides those the archive registry names. ``dry_run`` counts inside a transaction that is
    rolled back. ``on_stage`` is called with each of STAGES (a crash is tested at each).
    """
    if "admin" not in roles:
        raise ErasureRefused("purging a tenant needs an admin actor",
                             details={"actor": actor, "roles": sorted(roles)})
    validate_identifier("tenant", tenant_id)
    if signer is None and not dry_run:
        raise UsageError("a purge signs its tombstone: give the audit signing key"
                         " (--signing-key and --key-id)")
    started = time.perf_counter()
    report = PurgeReport(tenant_id, dry_run=dry_run)
    stage = on_stage or (lambda _name: None)
    async with db.connect(store_url, "dvt-purge") as (conn, config):
        schema = config.schema
        if not dry_run:
            report.finished_cleanups = await finish_cleanups(conn, schema, cold_options)
        async with conn.transaction():
            await _purge_rows(conn, schema, tenant_id, signer, actor, roots, report,
                              cold_options)
            if dry_run:
                raise psycopg.Rollback  # psycopg ends the block, rolled back, without an error
            stage("removed")
        if not dry_run:
            stage("committed")
            await finish_cleanups(conn, schema, cold_options)
    report.seconds = time.perf_counter() - started
    return report


async def _purge_rows(conn: Conn, schema: str, tenant: str, signer: Signer | None, actor: str,
                      roots: Sequence[str], report: PurgeReport,
                      cold_options: dict[str, Any]) -> None:
    await db.lock_removals(conn, schema)
    cur = await conn.execute(sql.SQL(
        "SELECT run_id FROM {} WHERE tenant_id = %s ORDER BY run_id").format(
            t(schema, "dvt_runs")), (tenant,))
    runs = [r[0] for r in await cur.fetchall()]
    if runs:
        await conn.execute(sql.SQL("SELECT {}(%s::text[], %s::text[])").format(
            t(schema, "dvt_lock_runs")), ([tenant] * len(runs), runs))
    cur = await conn.execute(sql.SQL(
        "SELECT count(*) FROM {} WHERE tenant_id = %s AND status <> ALL(%s)").format(
            t(schema, "dvt_runs")), (tenant, list(TERMINAL)))
    active = await cur.fetchone()
    if active and active[0]:
        raise ErasureRefused("the tenant has runs in progress; cancel them, then purge",
                             details={"tenantId": tenant, "activeRuns": int(active[0])})
    prefix = tenant_prefix(tenant)
    cur = await conn.execute(sql.SQL("SELECT DISTINCT root_url FROM {}").format(
        t(schema, "dvt_archive_batches")))
    all_roots = sorted({r[0] for r in await cur.fetchall()} | {normalize_root(r) for r in roots})
    for root_url in all_roots:
        root = open_root(root_url, **cold_options)
        report.objects += len(await asyncio.to_thread(root.list_prefix, prefix))
    touched = await _unlist_files(conn, schema, tenant, prefix, report)
    plans = await _plans_of(conn, schema, tenant)
    for table in await _tenant_tables(conn, schema):
        cur = await conn.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(
            t(schema, table)), (tenant,))
        report.removed[table.removeprefix("dvt_")] = cur.rowcount
    cur = await conn.execute(sql.SQL(
        "DELETE FROM {} WHERE tenant_id = %s AND kind = 'retention'").format(
            t(schema, "dvt_audit_tombstones")), (tenant,))
    report.removed["retention_tombstones"] = cur.rowcount
    cur = await conn.execute(sql.SQL(
        "DELETE FROM {plans} p WHERE p.sha256 = ANY(%s)"
        " AND NOT EXISTS (SELECT 1 FROM {tp} tp WHERE tp.sha256 = p.sha256)"
        " AND NOT EXISTS (SELECT 1 FROM {runs} r WHERE r.header->'planRef'->>'sha256' = p.sha256)"
    ).format(plans=t(schema, "dvt_plans"), tp=t(schema, "dvt_tenant_plans"),
             runs=t(schema, "dvt_runs")), (plans,))
    report.removed["plans"] = cur.rowcount
    removed = {k: v for k, v in report.removed.items() if v}
    removed["objects"] = report.objects
    if signer is not None:
        report.checkpoints = await db.resign_without(conn, schema, tenant, signer)
        report.tombstone = await db.write_tombstone(
            conn, schema, signer, kind="purge", tenant_id=tenant, actor=actor, removed=removed,
            checkpoints=report.checkpoints)
    for root_url in all_roots:
        await db.add_cleanup(conn, schema, root_url, [prefix + "/"],
                             sorted(touched.get(root_url, set())))


async def _tenant_tables(conn: Conn, schema: str) -> list[str]:
    """Every table of the schema with a tenant_id column, in ORDERED's order first."""
    cur = await conn.execute(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = %s"
        " AND column_name = 'tenant_id'", (schema,))
    found = {r[0] for r in await cur.fetchall()} - set(KEPT)
    return [n for n in ORDERED if n in found] + sorted(found - set(ORDERED))


async def _plans_of(conn: Conn, schema: str, tenant: str) -> list[str]:
    """The plans the tenant stored or ran (candidates for deletion with it)."""
    cur = await conn.execute(sql.SQL(
        "SELECT sha256 FROM {tp} WHERE tenant_id = %(t)s UNION"
        " SELECT header->'planRef'->>'sha256' FROM {runs} WHERE tenant_id = %(t)s").format(
            tp=t(schema, "dvt_tenant_plans"), runs=t(schema, "dvt_runs")), {"t": tenant})
    return [r[0] for r in await cur.fetchall() if r[0]]


async def _unlist_files(conn: Conn, schema: str, tenant: str, prefix: str,
                        report: PurgeReport) -> dict[str, set[str]]:
    """Take the tenant's files out of every batch row and manifest; the batches, by root."""
    batches = t(schema, "dvt_archive_batches")
    cur = await conn.execute(sql.SQL(
        "SELECT batch_id, root_url, state, files, manifest::text FROM {} b"
        " WHERE EXISTS (SELECT 1 FROM unnest(b.files) f WHERE left(f, %s) = %s)").format(batches),
        (len(prefix) + 1, prefix + "/"))
    touched: dict[str, set[str]] = {}
    for batch_id, root_url, state, files, manifest in await cur.fetchall():
        kept = [f for f in files if not f.startswith(prefix + "/")]
        touched.setdefault(root_url, set()).add(batch_id)
        if state == "committed" and kept == [manifest_file(batch_id)]:
            # The runs table's segments of this batch are all the tenant's: they go first.
            await conn.execute(sql.SQL(
                "DELETE FROM {} WHERE batch_id = %s AND tenant_id = %s").format(
                    t(schema, "dvt_archived_runs")), (batch_id, tenant))
            await conn.execute(sql.SQL("DELETE FROM {} WHERE batch_id = %s").format(batches),
                               (batch_id,))
            report.manifests_deleted += 1
            continue
        text = None
        if manifest is not None:
            text = rewrite_manifest(manifest, lambda p: not p.startswith(prefix + "/"),
                                    lambda run: run.get("tenantId") != tenant)
            report.manifests_rewritten += 1
        await conn.execute(sql.SQL(
            "UPDATE {} SET files = %s::text[], manifest = coalesce(%s::json, manifest)"
            " WHERE batch_id = %s").format(batches), (kept, text, batch_id))
    return touched


def rewrite_manifest(text: str, keep_file: Callable[[str], bool],
                     keep_run: Callable[[dict[str, Any]], bool]) -> str:
    """A batch manifest without the files and runs the predicates drop (rows recounted)."""
    manifest = json.loads(text)
    manifest["files"] = [f for f in manifest.get("files", []) if keep_file(f["path"])]
    manifest["runs"] = [r for r in manifest.get("runs", []) if keep_run(r)]
    manifest["rows"] = sum(int(f["rows"]) for f in manifest["files"])
    return json.dumps(manifest, sort_keys=True, indent=1)


async def finish_cleanups(conn: Conn, schema: str, cold_options: dict[str, Any]) -> int:
    """Do the cold work earlier commits recorded: delete objects, rewrite manifests."""
    done = 0
    for cleanup_id, root_url, paths, batches in await db.pending_cleanups(conn, schema):
        root = open_root(root_url, **cold_options)
        for path in paths:
            if path.endswith("/"):
                await asyncio.to_thread(root.remove_prefix, path)
            else:
                await asyncio.to_thread(root.remove, path)
                await asyncio.to_thread(root.prune_empty, path.rsplit("/", 1)[0])
        for batch_id in batches:
            text = await db.manifest_text(conn, schema, batch_id)
            name = manifest_file(batch_id)
            if text is None:
                await asyncio.to_thread(root.remove, name)
            else:
                await asyncio.to_thread(root.put, name, text.encode())
        await db.finish_cleanup(conn, schema, cleanup_id)
        done += 1
    return done
