"""`dvt audit keygen`, `dvt audit seal` and `dvt audit verify` against a real PostgreSQL store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from archive_helpers import seed_runs
from cli_helpers import invoke

from dvt_statestore_pg.store import PostgresRunStateStore


async def _seed(url: str) -> list[tuple[str, str]]:
    store = await PostgresRunStateStore.open(url)
    try:
        return await seed_runs(store, ["one-step", "diamond"], "audit-cli")
    finally:
        await store.close()


def test_audit_commands_end_to_end(
    capsys: pytest.CaptureFixture[str], pg_store_url: str, pg_dsn: str, pg_schema: str,
    tmp_path: Path,
) -> None:
    runs = asyncio.run(_seed(pg_store_url))
    tenant = runs[0][0]
    store = ["--store", pg_store_url]
    ring, key = str(tmp_path / "ring.json"), str(tmp_path / "k1.pem")

    made = invoke(capsys, ["audit", "keygen", "--key-id", "k1", "--out", key, "--keyring", ring,
                           "--json"])
    assert made.code == 0, made.stderr
    assert (Path(key).stat().st_mode & 0o777) == 0o600
    assert made.json()["key"]["publicKey"] in Path(ring).read_text()
    again = invoke(capsys, ["audit", "keygen", "--key-id", "k1", "--out", key, "--keyring", ring])
    assert again.code == 2

    missing = invoke(capsys, ["audit", "seal", *store])
    assert missing.code == 2
    assert "signing key" in missing.stderr
    sealed = invoke(capsys, ["audit", "seal", "--signing-key", key, "--key-id", "k1", "--json",
                             *store])
    assert sealed.code == 0, sealed.stderr
    assert sealed.json()["seal"]["runs"] == len(runs)
    assert sealed.json()["seal"]["checkpoint"] == 1
    assert "PRIVATE" not in sealed.stdout

    ok = invoke(capsys, ["audit", "verify", "--keyring", ring, "--json", *store])
    assert ok.code == 0, ok.stdout
    assert ok.json()["verify"]["ok"] is True
    assert ok.json()["verify"]["runs"] == len(runs)

    _, altered = runs[1]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'UPDATE "{pg_schema}".dvt_events SET envelope = (envelope::jsonb ||'
                     ' \'{"stepId": "forged"}\')::json WHERE run_id = %s AND run_seq = 4',
                     (altered,))
    bad = invoke(capsys, ["audit", "verify", "--keyring", ring, *store])
    assert bad.code == 1
    assert f"altered: tenantId={tenant} runId={altered} seq=4" in bad.stdout
    clean = invoke(capsys, ["audit", "verify", "--keyring", ring, "--run", runs[0][1], "--json",
                            *store])
    assert clean.code == 0
    assert clean.json()["verify"]["runs"] == 1
    other = invoke(capsys, ["audit", "verify", "--keyring", ring, "--tenant", "nobody", "--json",
                            *store])
    assert other.code == 0
    assert other.json()["verify"]["runs"] == 0
