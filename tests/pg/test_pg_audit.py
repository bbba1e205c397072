"""The audit hash chain on a real PostgreSQL store: sealing, tampering by SQL, keys, archive."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from archive_helpers import drain_outbox, seed_runs

from dvt_archive.archiver import archive_runs
from dvt_engine.audit_keys import Keyring, Signer, generate_key, load_keyring, load_signer
from dvt_engine.errors import AuditBusy
from dvt_statestore_pg import audit as audit_module
from dvt_statestore_pg.audit import SealReport, seal, seal_forever, verify
from dvt_statestore_pg.store import PostgresRunStateStore

pytestmark = pytest.mark.timeout(300)


def sql(store: PostgresRunStateStore, statement: str, *params: object) -> None:
    """Run a statement in the store's schema, as an attacker with database access would."""
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{store.config.schema}"')
        conn.execute(statement, params)  # type: ignore[arg-type]


async def sealed_run(store: PostgresRunStateStore, signer: Signer, name: str) -> tuple[str, str]:
    """One finished run, sealed."""
    [key] = await seed_runs(store, ["one-step"], name)
    report = await seal(store, signer)
    assert report.events >= 3
    assert report.checkpoint is not None
    return key


def only(report_findings: list, **expected: object) -> None:  # type: ignore[type-arg]
    """Exactly one finding, with these fields."""
    assert len(report_findings) == 1, [f.to_dict() for f in report_findings]
    data = report_findings[0].to_dict()
    assert {k: data.get(k) for k in expected} == expected, data


async def test_a_sealed_store_verifies_and_a_second_seal_has_nothing_to_do(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, ring = keys
    tenant, run = await sealed_run(store, signer, "clean")
    events = len(await store.fetch_events(tenant, run))
    again = await seal(store, signer)
    assert (again.events, again.checkpoint) == (0, None)
    report = await verify(store, ring)
    assert report.ok, report.to_dict()
    assert (report.runs, report.events, report.checkpoints) == (1, events, 1)


async def test_backfill_seals_existing_events_then_only_new_ones(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, ring = keys
    runs = await seed_runs(store, ["one-step", "diamond"], "pre")
    runs += await seed_runs(store, ["one-step"], "pre2")
    total = sum([len(await store.fetch_events(*k)) for k in runs])
    first = await seal(store, signer, batch_runs=2)
    assert (first.runs, first.events, first.checkpoints, first.checkpoint) == (3, total, 2, 2)
    [new] = await seed_runs(store, ["one-step"], "post")
    second = await seal(store, signer)
    assert (second.runs, second.events, second.checkpoint) == (
        1, len(await store.fetch_events(*new)), 3)
    report = await verify(store, ring)
    assert report.ok, report.to_dict()
    assert report.checkpoints == 3
    # Removing a checkpoint from the middle breaks the numbering.
    sql(store, "DELETE FROM dvt_audit_checkpoints WHERE checkpoint_id = 2")
    only((await verify(store, ring)).findings, what="checkpoint", checkpoint=3)


async def test_an_updated_payload_is_reported_as_altered(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, ring = keys
    _tenant, run = await sealed_run(store, signer, "alter")
    sql(store, "UPDATE dvt_events SET envelope = (envelope::jsonb ||"
               " '{\"eventType\": \"RUN_COMPLETED\"}')::json WHERE run_id = %s AND run_seq = 2",
        run)
    only((await verify(store, ring)).findings, what="altered", runId=run, seq=2)


async def test_a_deleted_row_is_reported(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, ring = keys
    _, run = await sealed_run(store, signer, "delete")
    sql(store, "DELETE FROM dvt_outbox WHERE run_id = %s", run)
    sql(store, "DELETE FROM dvt_events WHERE run_id = %s AND run_seq = 3", run)
    only((await verify(store, ring)).findings, what="deleted", runId=run, seq=3)


async def test_two_swapped_seqs_are_reported_as_reordered(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, ring = keys
    _, run = await sealed_run(store, signer, "swap")
    sql(store, "DELETE FROM dvt_outbox WHERE run_id = %s", run)
    for old, new in ((2, 1000), (3, 2), (1000, 3)):
        sql(store, "UPDATE dvt_events SET run_seq = %s WHERE run_id = %s AND run_seq = %s",
            new, run, old)
    only((await verify(store, ring)).findings, what="reordered", runId=run, seq=2)


async def test_a_forged_row_is_reported_as_inserted(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, ring = keys
    _, run = await sealed_run(store, signer, "forge")
    sql(store, "INSERT INTO dvt_events SELECT run_id, run_seq + 100, idempotency_key || 'x',"
               " event_id || 'x', event_type, tenant_id, project_id, environment_id, step_id,"
               " logical_attempt_id, engine_attempt_id, emitted_at, persisted_at, envelope"
               " FROM dvt_events WHERE run_id = %s AND run_seq = 1", run)
    only((await verify(store, ring)).findings, what="inserted", runId=run, seq=101)


async def test_a_chain_recomputed_without_the_key_fails_on_the_signature(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, ring = keys
    _, run = await sealed_run(store, signer, "rechain")
    sql(store, "UPDATE dvt_events SET envelope = (envelope::jsonb ||"
               " '{\"eventType\": \"RUN_COMPLETED\"}')::json WHERE run_id = %s AND run_seq = 2",
        run)
    # The attacker rebuilds the chain from the altered events, consistently, with the
    # library itself; only the signature is out of reach.
    sql(store, "DELETE FROM dvt_audit_chain WHERE run_id = %s", run)
    sql(store, "DELETE FROM dvt_audit_heads WHERE run_id = %s", run)
    forger = Signer("k1", None)
    resealed = await _seal_rows_only(store, forger)
    assert resealed >= 3
    report = await verify(store, ring)
    only(report.findings, what="signature", runId=run, checkpoint=1)


async def _seal_rows_only(store: PostgresRunStateStore, forger: Signer) -> int:
    """Recompute chain rows like the sealer, without writing a checkpoint (no key)."""
    from dvt_statestore_pg import audit

    async def no_checkpoint(*_: object) -> int:
        return 0

    original = audit._write_checkpoint
    audit._write_checkpoint = no_checkpoint  # type: ignore[assignment]
    try:
        return (await seal(store, forger)).events
    finally:
        audit._write_checkpoint = original  # type: ignore[assignment]


async def test_an_edited_checkpoint_is_reported(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, ring = keys
    await sealed_run(store, signer, "cp")
    sql(store, "UPDATE dvt_audit_checkpoints"
               " SET payload = replace(payload, '\"seq\":', '\"seq\":1')")
    findings = (await verify(store, ring)).findings
    assert next(f.to_dict()["what"] for f in findings) == "checkpoint"


async def test_rotated_keys_verify_old_and_new_checkpoints_and_an_unknown_key_is_reported(
    store: PostgresRunStateStore, tmp_path: Path,
) -> None:
    ring_path = tmp_path / "ring.json"
    generate_key("2026-q1", tmp_path / "old.pem", ring_path)
    await sealed_run(store, load_signer(tmp_path / "old.pem", "2026-q1"), "rot1")
    generate_key("2026-q2", tmp_path / "new.pem", ring_path)
    await sealed_run(store, load_signer(tmp_path / "new.pem", "2026-q2"), "rot2")
    ring = load_keyring(ring_path)
    assert ring.key_ids == ["2026-q1", "2026-q2"]
    report = await verify(store, ring)
    assert report.ok, report.to_dict()
    assert report.checkpoints == 2
    # A verifier that only has the new key: the old checkpoint's key id is unknown.
    data = json.loads(ring_path.read_text())
    new_only = Keyring({"2026-q2": base64.b64decode(data["keys"]["2026-q2"])})
    only((await verify(store, new_only)).findings, what="unknown-key", checkpoint=1)


async def test_an_archived_run_verifies_and_an_edited_parquet_file_is_detected(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring], tmp_path: Path,
) -> None:
    signer, ring = keys
    tenant, run = await sealed_run(store, signer, "cold")
    [late] = await seed_runs(store, ["one-step"], "cold-late")  # archived before any seal
    await drain_outbox(store)
    moved = await archive_runs(store.url, str(tmp_path / "cold"), older_than=timedelta(0))
    assert moved.runs == 2
    sealed = await seal(store, signer)
    assert sealed.events == len(await store.fetch_events(*late))
    assert not sealed.gaps
    report = await verify(store, ring)
    assert report.ok, report.to_dict()
    assert report.events == sum([len(await store.fetch_events(*k)) for k in [(tenant, run), late]])

    [path] = sorted((tmp_path / "cold").rglob("*.parquet"))
    table = pq.read_table(path)
    envelopes = table.column("envelope").to_pylist()
    runs, seqs = table.column("run_id").to_pylist(), table.column("run_seq").to_pylist()
    index = next(i for i in range(len(runs)) if runs[i] == run and seqs[i] == 2)
    envelopes[index] = envelopes[index].replace('"eventType":"', '"eventType":"X', 1)
    assert envelopes[index] != table.column("envelope").to_pylist()[index]
    edited = table.set_column(table.schema.get_field_index("envelope"), "envelope",
                              pa.array(envelopes, type=table.schema.field("envelope").type))
    pq.write_table(edited, path)
    fresh = await PostgresRunStateStore.open(store.url)
    try:
        only((await verify(fresh, ring, run_id=run)).findings, what="altered", runId=run, seq=2)
    finally:
        await fresh.close()


async def test_one_run_id_in_two_tenants_has_two_chains(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, ring = keys
    [(tenant, run)] = await seed_runs(store, ["one-step"], "twin")
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{store.config.schema}"')
        for table in ("dvt_runs", "dvt_events"):
            conn.execute(f"CREATE TEMP TABLE t_{table} AS SELECT * FROM {table}"
                         " WHERE tenant_id = %s AND run_id = %s", (tenant, run))
            conn.execute(f"UPDATE t_{table} SET tenant_id = 'other'")
            conn.execute(f"INSERT INTO {table} SELECT * FROM t_{table}")
    report = await seal(store, signer)
    assert (report.runs, report.checkpoint) == (2, 1)
    assert (await verify(store, ring)).ok
    sql(store, "UPDATE dvt_events SET persisted_at = persisted_at + interval '1 second'"
               " WHERE tenant_id = 'other' AND run_id = %s AND run_seq = 2", run)
    only((await verify(store, ring)).findings, what="altered", tenantId="other", runId=run,
         seq=2)
    assert (await verify(store, ring, tenant_id=tenant)).ok


async def test_sealing_while_runs_append_seals_prefixes_that_verify(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, ring = keys
    seeding = asyncio.create_task(seed_runs(store, ["diamond", "fan-out-fan-in", "one-step",
                                                    "linear-chain"], "live"))
    passes = []
    while not seeding.done():
        passes.append(await seal(store, signer))
        assert (await verify(store, ring)).ok
    runs = await seeding
    passes.append(await seal(store, signer))
    report = await verify(store, ring)
    assert report.ok, report.to_dict()
    assert sum(p.events for p in passes) == report.events == sum(
        [len(await store.fetch_events(*key)) for key in runs])
    assert not any(p.gaps for p in passes)
    assert sum(p.events for p in passes[:-1]) > 0  # passes did overlap the appends


async def test_a_second_sealer_is_refused(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, _ = keys
    await seed_runs(store, ["one-step"], "busy")
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (audit_module._SEAL_LOCK,))
        with pytest.raises(AuditBusy):
            await seal(store, signer)
        # Released here: a closed connection's backend may still hold it for a moment.
        conn.execute("SELECT pg_advisory_unlock(%s)", (audit_module._SEAL_LOCK,))
    assert (await seal(store, signer)).runs == 1
    assert repr(signer) == "Signer(key_id='k1')"


async def test_the_background_loop_seals_each_pass_until_stopped(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
) -> None:
    signer, ring = keys
    [key] = await seed_runs(store, ["one-step"], "loop")
    stop = asyncio.Event()
    seen: list[int] = []

    def on_pass(report: SealReport) -> None:
        seen.append(report.events)
        if len(seen) == 2:
            stop.set()

    await asyncio.wait_for(seal_forever(store, signer, interval=0.01, stop=stop,
                                        on_pass=on_pass), timeout=60)
    assert seen == [len(await store.fetch_events(*key)), 0]
    assert (await verify(store, ring)).ok
