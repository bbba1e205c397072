"""`dvt archive run`, `dvt events`, `dvt store rebuild --from-cold` and `dvt audit export`."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from archive_helpers import drain_outbox, read_all, seed_runs
from cli_helpers import invoke

from dvt_statestore_pg.store import PostgresRunStateStore


async def _seed(url: str) -> tuple[list[tuple[str, str]], dict]:  # type: ignore[type-arg]
    store = await PostgresRunStateStore.open(url)
    try:
        runs = await seed_runs(store, ["fan-out-fan-in", "flaky-third-attempt"], "cli")
        await drain_outbox(store)
        return runs, await read_all(store, runs)
    finally:
        await store.close()


async def _reads(url: str, runs: list[tuple[str, str]]) -> dict:  # type: ignore[type-arg]
    store = await PostgresRunStateStore.open(url)
    try:
        return await read_all(store, runs)
    finally:
        await store.close()


def test_archive_commands_end_to_end(
    capsys: pytest.CaptureFixture[str], pg_store_url: str, tmp_path: Path,
) -> None:
    runs, before = asyncio.run(_seed(pg_store_url))
    tenant = runs[0][0]
    store = ["--store", pg_store_url, "--tenant", tenant]
    events_before = {run: invoke(capsys, ["events", run, "--json", *store]).json_lines()
                     for _, run in runs}
    status_before = {run: invoke(capsys, ["status", run, "--json", *store]).json()
                     for _, run in runs}

    dry = invoke(capsys, ["archive", "run", "--older-than", "0s", "--dry-run", "--json",
                          "--to", str(tmp_path / "cold"), *store])
    assert dry.code == 0, dry.stderr
    assert dry.json()["archive"]["runs"] >= len(runs)
    assert dry.json()["archive"]["batches"] == 0
    done = invoke(capsys, ["archive", "run", "--older-than", "0s", "--json",
                           "--to", str(tmp_path / "cold"), *store])
    assert done.code == 0, done.stderr
    assert done.json()["archive"]["runs"] == dry.json()["archive"]["runs"]

    for _, run in runs:
        assert invoke(capsys, ["events", run, "--json", *store]).json_lines() == \
            events_before[run]
        assert invoke(capsys, ["status", run, "--json", *store]).json() == status_before[run]
    rebuilt = invoke(capsys, ["store", "rebuild", "--from-cold", "--json", *store])
    assert rebuilt.code == 0, rebuilt.stderr
    assert rebuilt.json()["rebuilt"]["differed"] == []
    assert asyncio.run(_reads(pg_store_url, runs)) == before

    out = tmp_path / "export"
    exported = invoke(capsys, ["audit", "export", "--from", "2000-01-01", "--to", "2100-01-01",
                               "--out", str(out), "--json", *store])
    assert exported.code == 0, exported.stderr
    lines = (out / "events.jsonl").read_text().splitlines()
    ours = [doc for doc in map(json.loads, lines) if doc["runId"] in {r for _, r in runs}]

    def order(doc: dict) -> tuple[str, int]:  # type: ignore[type-arg]
        return doc["runId"], doc["runSeq"]

    assert sorted(ours, key=order) == sorted(
        (doc for docs in events_before.values() for doc in docs), key=order)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"][0]["sha256"] == hashlib.sha256(
        (out / "events.jsonl").read_bytes()).hexdigest()
    assert manifest["rows"] == len(lines)

    refused = invoke(capsys, ["archive", "run", "--older-than", "ninety", *store])
    assert refused.code == 2
    assert "USAGE_ERROR" in refused.stderr + refused.stdout
