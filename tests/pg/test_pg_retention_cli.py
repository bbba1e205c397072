"""`dvt retention set|show|apply` and `dvt tenant purge` against a real PostgreSQL store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cli_helpers import invoke
from erasure_helpers import seed_tenant, tenant_rows

from dvt_statestore_pg.store import PostgresRunStateStore

TENANT = "cli-gone"


async def _seed(url: str) -> None:
    store = await PostgresRunStateStore.open(url)
    try:
        await seed_tenant(store, TENANT, ["one-step"], "cli")
    finally:
        await store.close()


async def _rows(url: str) -> dict[str, dict[str, int]]:
    store = await PostgresRunStateStore.open(url)
    try:
        return tenant_rows(store)
    finally:
        await store.close()


def test_retention_and_purge_commands(capsys: pytest.CaptureFixture[str], pg_store_url: str,
                                      tmp_path: Path) -> None:
    store = ["--store", pg_store_url]
    shown = invoke(capsys, ["retention", "show", "--tenant", TENANT, "--json", *store])
    assert shown.code == 0, shown.stderr
    assert shown.json()["retention"] == {"tenantId": TENANT, "hotDays": 90, "coldYears": 7,
                                         "default": True}
    nothing = invoke(capsys, ["retention", "set", "--tenant", TENANT, *store])
    assert nothing.code == 2
    changed = invoke(capsys, ["retention", "set", "--tenant", TENANT, "--cold-years", "3",
                              *store])
    assert changed.code == 0, changed.stderr
    assert "90 days hot, 3 years kept" in changed.stdout

    asyncio.run(_seed(pg_store_url))
    cold = str(tmp_path / "cold")
    dry = invoke(capsys, ["retention", "apply", "--dry-run", "--to", cold, "--json", *store])
    assert dry.code == 0, dry.stderr
    assert dry.json()["retention"]["dryRun"] is True

    ring, key = str(tmp_path / "ring.json"), str(tmp_path / "k1.pem")
    assert invoke(capsys, ["audit", "keygen", "--key-id", "k1", "--out", key,
                           "--keyring", ring]).code == 0
    sign = ["--signing-key", key, "--key-id", "k1"]
    assert invoke(capsys, ["audit", "seal", *sign, *store]).code == 0

    unconfirmed = invoke(capsys, ["tenant", "purge", TENANT, *sign, *store])
    assert unconfirmed.code == 2
    assert "--yes" in unconfirmed.stderr
    wrong = invoke(capsys, ["tenant", "purge", TENANT, "--yes", "other", *sign, *store])
    assert wrong.code == 2
    assert asyncio.run(_rows(pg_store_url))[TENANT]["dvt_runs"] == 1

    purged = invoke(capsys, ["tenant", "purge", TENANT, "--yes", TENANT, "--actor", "alice",
                             "--json", *sign, *store])
    assert purged.code == 0, purged.stderr
    assert purged.json()["purge"]["removed"]["runs"] == 1
    assert purged.json()["purge"]["tombstone"]["keyId"] == "k1"
    assert asyncio.run(_rows(pg_store_url))[TENANT] == {"dvt_audit_tombstones": 1}

    verified = invoke(capsys, ["audit", "verify", "--keyring", ring, "--tenant", TENANT, *store])
    assert verified.code == 0, verified.stdout
    assert f"tenant {TENANT}: purged at " in verified.stdout
    assert "by alice" in verified.stdout
    assert "signature valid" in verified.stdout
