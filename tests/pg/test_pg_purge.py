"""`dvt tenant purge` on a real PostgreSQL, with archives on a directory and on the
S3-protocol server: no row and no object of the tenant is left, the other tenant is untouched,
and the signed tombstone verifies."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from archive_helpers import drain_outbox, read_all
from erasure_helpers import (
    local_files,
    plan_shas,
    s3_files,
    seed_tenant,
    side_rows,
    stored_plans,
    tenant_rows,
    text_of,
)

from dvt_archive.archiver import archive_runs
from dvt_archive.purge import purge_tenant
from dvt_archive.reader import ParquetColdReader
from dvt_engine.audit_keys import Keyring, Signer, generate_key, load_keyring
from dvt_engine.errors import ErasureRefused, UsageError
from dvt_local.s3 import S3Server
from dvt_statestore_pg.audit import seal, verify
from dvt_statestore_pg.erasure import set_policy
from dvt_statestore_pg.store import PostgresRunStateStore

pytestmark = pytest.mark.timeout(300)
GONE, KEPT = "gone-co", "kept-co"


async def test_purge_leaves_no_row_and_no_object_of_the_tenant(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring], tmp_path: Path,
    dvt_s3_server: S3Server, dvt_s3_artifacts_url: str,
) -> None:
    signer, ring = keys
    options = dvt_s3_server.client_options()
    local = tmp_path / "cold"
    # Both tenants run "one-step" (one shared plan); only GONE runs "diamond".
    gone = await seed_tenant(store, GONE, ["one-step", "diamond"], "a")
    kept = await seed_tenant(store, KEPT, ["one-step"], "a")
    await seal(store, signer)
    await drain_outbox(store)
    await archive_runs(store.url, str(local), older_than=timedelta(0))
    gone += await seed_tenant(store, GONE, ["approval-rejected"], "b")
    kept += await seed_tenant(store, KEPT, ["approval-rejected"], "b")
    await seal(store, signer)
    await drain_outbox(store)
    await archive_runs(store.url, dvt_s3_artifacts_url, older_than=timedelta(0), **options)
    gone += await seed_tenant(store, GONE, ["cancel-mid-run"], "c")  # stays hot
    kept += await seed_tenant(store, KEPT, ["cancel-mid-run"], "c")
    await seal(store, signer)
    shared = plan_shas(store, [kept[0]])
    only_gone = plan_shas(store, gone) - plan_shas(store, kept)
    assert shared
    assert only_gone
    assert shared <= plan_shas(store, gone)
    await side_rows(store, GONE, next(iter(only_gone)))
    await set_policy(store.url, GONE, cold_years=10)
    await side_rows(store, KEPT, next(iter(shared)))

    rows_before = tenant_rows(store)
    assert {"dvt_runs", "dvt_events", "dvt_outbox", "dvt_archived_runs", "dvt_audit_chain",
            "dvt_audit_heads", "dvt_api_keys", "dvt_idempotency_keys", "dvt_tenant_plans",
            "dvt_tenant_limits", "dvt_webhooks", "dvt_webhook_deliveries",
            "dvt_budget_crossings", "dvt_admission_buckets", "dvt_admission_slots",
            "dvt_admission_queue", "dvt_retention_policies"} <= set(rows_before[GONE]), \
        rows_before[GONE]
    gone_objects = [f for f in local_files(local) if f.startswith(f"tenant={GONE}/")]
    gone_objects += [f for f in s3_files(dvt_s3_server, dvt_s3_artifacts_url)
                     if f.startswith(f"tenant={GONE}/")]
    assert len(gone_objects) >= 2
    store.attach_cold_reader(ParquetColdReader(dvt_s3_artifacts_url, **options))
    kept_reads = await read_all(store, kept,
                                ParquetColdReader(dvt_s3_artifacts_url, **options))

    report = await purge_tenant(store.url, GONE, signer, actor="alice", roles=("admin",),
                                **options)

    assert report.removed["runs"] == len(gone) == 4
    assert report.objects == len(gone_objects)
    assert report.checkpoints is not None
    assert report.checkpoints["headsDropped"] >= 4
    # No row of the tenant anywhere, but the tombstone; the other tenant's rows as before.
    rows_after = tenant_rows(store)
    assert rows_after[GONE] == {"dvt_audit_tombstones": 1}
    assert rows_after[KEPT] == rows_before[KEPT]
    for query in ("SELECT payload FROM dvt_audit_checkpoints",
                  "SELECT files, manifest FROM dvt_archive_batches",
                  "SELECT * FROM dvt_cold_cleanup"):
        assert GONE not in text_of(store, query), query
    # The plan only the tenant used is gone; the shared one stays.
    assert only_gone.isdisjoint(stored_plans(store))
    assert shared <= stored_plans(store)
    # No object of the tenant, on the directory or the bucket; manifests name none of it.
    local_after = local_files(local)
    bucket_after = s3_files(dvt_s3_server, dvt_s3_artifacts_url)
    assert not [f for f in [*local_after, *bucket_after] if GONE in f]
    for name in local_after:
        assert GONE not in (local / name).read_bytes().decode("latin-1"), name
    for name, data in bucket_after.items():
        assert GONE not in data.decode("latin-1"), name
    manifests = [json.loads((local / n).read_text()) for n in local_after
                 if n.startswith("_manifests/")]
    manifests += [json.loads(d) for n, d in bucket_after.items() if n.startswith("_manifests/")]
    assert len(manifests) == 2
    for manifest in manifests:
        assert manifest["rows"] == sum(f["rows"] for f in manifest["files"])
        assert {r["tenantId"] for r in manifest["runs"]} == {KEPT}
    # The other tenant reads exactly as before, from both tiers.
    assert await read_all(store, kept,
                          ParquetColdReader(dvt_s3_artifacts_url, **options)) == kept_reads

    # verify: the re-signed checkpoints and the other tenant's chains hold; the purge is
    # reported as such, signature valid.
    everything = await verify(store, ring)
    assert everything.ok, [f.to_dict() for f in everything.findings]
    assert everything.runs == len(kept)
    [stone] = everything.erasures
    assert (stone["kind"], stone["tenantId"], stone["actor"], stone["signature"]) == (
        "purge", GONE, "alice", "valid")
    assert stone["removed"]["runs"] == 4
    assert stone["removed"]["objects"] == len(gone_objects)
    alone = await verify(store, ring, tenant_id=GONE)
    assert alone.ok
    assert alone.runs == 0
    assert [e["kind"] for e in alone.erasures] == ["purge"]


async def test_a_changed_tombstone_or_an_unknown_key_is_a_finding(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring], tmp_path: Path,
) -> None:
    signer, ring = keys
    await seed_tenant(store, GONE, ["one-step"], "t")
    await seal(store, signer)
    await purge_tenant(store.url, GONE, signer, actor="alice", roles=("admin",))
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{store.config.schema}"')
        conn.execute("UPDATE dvt_audit_tombstones SET payload = replace(payload, 'alice', 'bob')")
    report = await verify(store, ring)
    assert [f.what for f in report.findings] == ["tombstone"]
    assert report.erasures == []
    generate_key("k2", tmp_path / "k2.pem", tmp_path / "other.json")
    report = await verify(store, load_keyring(tmp_path / "other.json"))
    assert "unknown-key" in [f.what for f in report.findings]


async def test_purge_needs_an_admin_a_key_and_ended_runs(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, _ = keys
    [run] = await seed_tenant(store, GONE, ["one-step"], "r")
    with pytest.raises(ErasureRefused):
        await purge_tenant(store.url, GONE, signer, actor="eve", roles=("operator",))
    with pytest.raises(UsageError):
        await purge_tenant(store.url, GONE, None, actor="alice", roles=("admin",))
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        conn.execute(f'UPDATE "{store.config.schema}".dvt_runs SET status = %s'
                     " WHERE tenant_id = %s AND run_id = %s", ("RUNNING", *run))
    with pytest.raises(ErasureRefused) as refused:
        await purge_tenant(store.url, GONE, signer, actor="alice", roles=("admin",))
    assert refused.value.details["activeRuns"] == 1
    assert tenant_rows(store)[GONE]["dvt_runs"] == 1  # nothing was removed
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        conn.execute(f'UPDATE "{store.config.schema}".dvt_runs SET status = %s'
                     " WHERE tenant_id = %s AND run_id = %s", ("COMPLETED", *run))
    before = tenant_rows(store)
    dry = await purge_tenant(store.url, GONE, None, actor="alice", roles=("admin",),
                             dry_run=True)
    assert dry.removed["runs"] == 1
    assert dry.removed["events"] == before[GONE]["dvt_events"]
    assert tenant_rows(store) == before


async def test_a_purge_interrupted_after_its_commit_is_finished_by_the_next_one(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring], tmp_path: Path,
) -> None:
    signer, ring = keys
    local = tmp_path / "cold"
    await seed_tenant(store, GONE, ["one-step"], "x")
    await seed_tenant(store, KEPT, ["one-step"], "x")
    await seal(store, signer)
    await drain_outbox(store)
    await archive_runs(store.url, str(local), older_than=timedelta(0))

    class Crash(Exception):
        pass

    def crash(stage: str) -> None:
        if stage == "committed":
            raise Crash(stage)

    with pytest.raises(Crash):
        await purge_tenant(store.url, GONE, signer, actor="alice", roles=("admin",),
                           on_stage=crash)
    assert GONE not in tenant_rows(store) or set(tenant_rows(store)[GONE]) == {
        "dvt_audit_tombstones"}
    assert [f for f in local_files(local) if f.startswith(f"tenant={GONE}/")]  # still there
    again = await purge_tenant(store.url, GONE, signer, actor="alice", roles=("admin",))
    assert again.finished_cleanups == 1
    assert not [f for f in local_files(local) if GONE in f]
    [manifest] = [n for n in local_files(local) if n.startswith("_manifests/")]
    assert GONE not in (local / manifest).read_text()
    report = await verify(store, ring)
    assert report.ok, [f.to_dict() for f in report.findings]
    assert [e["kind"] for e in report.erasures] == ["purge", "purge"]
