"""Retention policies and `dvt retention apply` on a real PostgreSQL with real Parquet files:
hot runs archived by their tenant's hot term, cold day partitions deleted past the cold term,
manifests rewritten, a signed tombstone that verify accepts, and a crash finished by a rerun."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from archive_helpers import drain_outbox, hot_counts, read_all
from erasure_helpers import local_files, s3_files, seed_tenant, tenant_rows

from dvt_archive.reader import ParquetColdReader
from dvt_archive.retention import apply_retention
from dvt_engine.audit_keys import Keyring, Signer
from dvt_engine.erasure import RetentionPolicy
from dvt_engine.errors import ErasureRefused, UsageError
from dvt_local.s3 import S3Server
from dvt_statestore_pg.audit import seal, verify
from dvt_statestore_pg.erasure import get_policy, set_policy
from dvt_statestore_pg.store import PostgresRunStateStore

pytestmark = pytest.mark.timeout(300)
SHORT, LONG, DEFAULT = "short-co", "long-co", "default-co"


async def test_policies_default_set_and_keep_the_other_term(store: PostgresRunStateStore) -> None:
    assert await get_policy(store.url, SHORT) == RetentionPolicy(SHORT, 90, 7, False)
    assert (await set_policy(store.url, SHORT, hot_days=0)) == RetentionPolicy(SHORT, 0, 7, True)
    assert (await set_policy(store.url, SHORT, cold_years=2)) == RetentionPolicy(
        SHORT, 0, 2, True)
    assert await get_policy(store.url, SHORT) == RetentionPolicy(SHORT, 0, 2, True)
    assert (await get_policy(store.url, LONG)).to_dict()["default"] is True
    for bad in ({"hot_days": -1}, {"cold_years": 0}, {"cold_years": 1000}):
        with pytest.raises(UsageError):
            await set_policy(store.url, SHORT, **bad)  # type: ignore[arg-type]


async def _three_tenants(store: PostgresRunStateStore, signer: Signer
                         ) -> dict[str, list[tuple[str, str]]]:
    await set_policy(store.url, SHORT, hot_days=0, cold_years=1)
    await set_policy(store.url, LONG, hot_days=0, cold_years=10)
    runs = {SHORT: await seed_tenant(store, SHORT, ["one-step", "diamond"], "s"),
            LONG: await seed_tenant(store, LONG, ["one-step", "diamond"], "l"),
            DEFAULT: await seed_tenant(store, DEFAULT, ["one-step"], "d")}
    await seal(store, signer)
    await drain_outbox(store)
    return runs


async def test_apply_archives_by_hot_term_and_deletes_cold_partitions_past_the_term(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring], tmp_path: Path,
) -> None:
    signer, ring = keys
    cold = tmp_path / "cold"
    runs = await _three_tenants(store, signer)
    first = await apply_retention(store.url, str(cold), signer=signer)
    # Hot term 0 days: SHORT's and LONG's runs moved; DEFAULT's (90 days) stay hot.
    assert first.archived["runs"] == 4
    assert first.expired_runs == 0
    assert set(hot_counts(store.config.conninfo, store.config.schema,
                          runs[SHORT] + runs[LONG]).values()) == {0}
    assert hot_counts(store.config.conninfo, store.config.schema, runs[DEFAULT])[
        runs[DEFAULT][0]] > 0
    files = local_files(cold)
    assert any(f.startswith(f"tenant={SHORT}/") for f in files)
    long_reads = await read_all(store, runs[LONG], ParquetColdReader(str(cold)))

    later = datetime.now(UTC) + timedelta(days=2 * 366)
    dry = await apply_retention(store.url, str(cold), now=later, dry_run=True)
    assert (dry.expired_runs, dry.dry_run) == (2, True)
    assert dry.files >= 1
    assert local_files(cold) == files
    assert tenant_rows(store)[SHORT]["dvt_runs"] == 2

    # Two years on: SHORT's one-year term is over, LONG's ten years are not.
    second = await apply_retention(store.url, str(cold), signer=signer, now=later,
                                   actor="nightly")
    assert (second.expired_runs, second.files) == (2, dry.files)
    assert second.expired_events == dry.expired_events > 0
    after = local_files(cold)
    assert not [f for f in after if SHORT in f]
    assert not (cold / f"tenant={SHORT}").exists()  # whole day partitions, and their parents
    assert [f for f in after if f.startswith(f"tenant={LONG}/")] == [
        f for f in files if f.startswith(f"tenant={LONG}/")]
    # Two years on, DEFAULT's run is past its 90 hot days too: the pass archived it.
    assert second.archived["runs"] == 1
    manifests = [json.loads((cold / f).read_text()) for f in after if f.startswith("_manif")]
    assert sorted({r["tenantId"] for r in m["runs"]} == {LONG} for m in manifests) == [
        False, True]
    for manifest in manifests:
        assert SHORT not in json.dumps(manifest)
        assert manifest["rows"] == sum(f["rows"] for f in manifest["files"])
    rows = tenant_rows(store)
    assert set(rows[SHORT]) == {"dvt_retention_policies", "dvt_audit_tombstones"}
    assert rows[LONG]["dvt_runs"] == 2
    assert await read_all(store, runs[LONG], ParquetColdReader(str(cold))) == long_reads

    report = await verify(store, ring)
    assert report.ok, [f.to_dict() for f in report.findings]
    [stone] = report.erasures
    assert (stone["kind"], stone["tenantId"], stone["actor"]) == ("retention", SHORT, "nightly")
    assert stone["removed"]["runs"] == 2


async def test_an_expiry_interrupted_after_its_commit_is_finished_by_the_next_pass(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring], tmp_path: Path,
) -> None:
    signer, ring = keys
    cold = tmp_path / "cold"
    await _three_tenants(store, signer)
    await apply_retention(store.url, str(cold), signer=signer)
    later = datetime.now(UTC) + timedelta(days=2 * 366)

    class Crash(Exception):
        pass

    def crash(stage: str) -> None:
        if stage == "committed":
            raise Crash(stage)

    with pytest.raises(Crash):
        await apply_retention(store.url, str(cold), signer=signer, now=later, on_stage=crash)
    assert [f for f in local_files(cold) if SHORT in f]  # committed, files not yet deleted
    again = await apply_retention(store.url, str(cold), signer=signer, now=later)
    assert again.finished_cleanups == 1
    assert again.expired_runs == 0
    assert not [f for f in local_files(cold) if SHORT in f]
    report = await verify(store, ring)
    assert report.ok, [f.to_dict() for f in report.findings]


async def test_expiring_sealed_runs_needs_the_signing_key(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring], tmp_path: Path,
) -> None:
    signer, _ = keys
    cold = tmp_path / "cold"
    await _three_tenants(store, signer)
    await apply_retention(store.url, str(cold))  # archiving alone needs no key
    later = datetime.now(UTC) + timedelta(days=2 * 366)
    with pytest.raises(ErasureRefused):
        await apply_retention(store.url, str(cold), now=later)
    assert tenant_rows(store)[SHORT]["dvt_runs"] == 2


def _when_cutoff_is(day: date) -> datetime:
    """A time whose one-year term starts on ``day``."""
    return datetime(day.year + 1, day.month, day.day, 12, tzinfo=UTC)


async def test_a_run_goes_whole_and_a_shared_day_partition_waits_for_it(
    store: PostgresRunStateStore, tmp_path: Path,
) -> None:
    cold = tmp_path / "cold"
    await set_policy(store.url, SHORT, hot_days=0, cold_years=1)
    [spanning, early] = await seed_tenant(store, SHORT, ["one-step", "diamond"], "w")
    await drain_outbox(store)
    today = datetime.now(UTC).date()
    # `spanning` began two days ago and ended yesterday; `early` ran entirely two days ago.
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{store.config.schema}"')
        conn.execute("UPDATE dvt_events SET persisted_at = persisted_at - interval '1 day'"
                     " WHERE tenant_id = %s AND run_id = %s", spanning)
        conn.execute("UPDATE dvt_events SET persisted_at = persisted_at - interval '1 day'"
                     " WHERE tenant_id = %s AND run_id = %s AND run_seq = 1", spanning)
        conn.execute("UPDATE dvt_events SET persisted_at = persisted_at - interval '2 days'"
                     " WHERE tenant_id = %s AND run_id = %s", early)
    assert (await apply_retention(store.url, str(cold))).archived["runs"] == 2
    files = local_files(cold)
    days = sorted({f.split("/day=")[1][:2] for f in files if f.startswith("tenant=")})
    assert len(days) == 2
    spanning_reads = await read_all(store, [spanning], ParquetColdReader(str(cold)))

    # Yesterday is the term's first day: `early` is past it, `spanning` is not. The day before
    # yesterday holds both, so its file stays until `spanning` goes too.
    first = await apply_retention(store.url, str(cold), now=_when_cutoff_is(
        today - timedelta(days=1)))
    assert (first.expired_runs, first.files) == (1, 0)
    assert local_files(cold) == files
    assert tenant_rows(store)[SHORT]["dvt_runs"] == 1
    assert await read_all(store, [spanning], ParquetColdReader(str(cold))) == spanning_reads
    manifest = next(json.loads((cold / f).read_text()) for f in files if f.startswith("_man"))
    assert [r["runId"] for r in manifest["runs"]] == [spanning[1]]

    second = await apply_retention(store.url, str(cold), now=_when_cutoff_is(today))
    assert (second.expired_runs, second.files, second.partitions) == (1, 2, 2)
    assert local_files(cold) == []
    assert second.manifests_deleted == 1


async def test_expiry_deletes_objects_on_the_s3_protocol_server(
    store: PostgresRunStateStore, keys: tuple[Signer, Keyring],
    dvt_s3_server: S3Server, dvt_s3_artifacts_url: str,
) -> None:
    signer, ring = keys
    options = dvt_s3_server.client_options()
    runs = await _three_tenants(store, signer)
    await apply_retention(store.url, dvt_s3_artifacts_url, signer=signer, **options)
    before = s3_files(dvt_s3_server, dvt_s3_artifacts_url)
    assert [n for n in before if n.startswith(f"tenant={SHORT}/")]
    reader = ParquetColdReader(dvt_s3_artifacts_url, **options)
    long_reads = await read_all(store, runs[LONG], reader)

    later = datetime.now(UTC) + timedelta(days=2 * 366)
    report = await apply_retention(store.url, dvt_s3_artifacts_url, signer=signer, now=later,
                                   **options)
    assert report.expired_runs == 2
    after = s3_files(dvt_s3_server, dvt_s3_artifacts_url)
    assert not [n for n in after if SHORT in n]
    for name, data in after.items():
        assert SHORT not in data.decode("latin-1"), name
    assert [n for n in after if n.startswith(f"tenant={LONG}/")] == [
        n for n in before if n.startswith(f"tenant={LONG}/")]
    assert await read_all(store, runs[LONG], reader) == long_reads
    store.attach_cold_reader(reader)
    checked = await verify(store, ring)
    assert checked.ok, [f.to_dict() for f in checked.findings]
