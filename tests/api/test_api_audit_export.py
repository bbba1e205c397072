"""GET /v1/audit/export against a real `dvt serve` on PostgreSQL with a Parquet archive: the
caller's tenant's events from both tiers, byte for byte the CLI export, a closing manifest line
whose sha256 covers the lines, auditor or admin only, another tenant never reachable."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from api_helpers import ApiServer, chain_plan, dvt, tenant

from dvt_archive.archiver import archive_runs
from dvt_statestore_pg.testing import schema_store_url


@pytest.fixture(scope="module")
def api_store_url(dvt_postgres_dsn: str) -> Iterator[str]:
    """No outbox: runs are archivable as soon as they end."""
    with schema_store_url(dvt_postgres_dsn, prefix="dvt_api_audit") as url:
        yield url + "&outbox=false"


def _finished_run(c: httpx.Client) -> str:
    run_id = str(c.post("/v1/runs", json={"plan": chain_plan(3)}).json()["runId"])
    with c.stream("GET", f"/v1/runs/{run_id}/stream") as s:
        assert s.status_code == 200
        for _ in s.iter_lines():
            pass  # the stream ends by itself after the terminal event
    return run_id


def _period() -> dict[str, str]:
    today = datetime.now(UTC).date()
    return {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=2))}


def test_the_export_streams_both_tiers_with_a_manifest_line(
    api_server: ApiServer, api_store_url: str, tmp_path: Path,
) -> None:
    owner, other = tenant(), tenant()
    with api_server.client(api_server.key(owner, "runner", "reader")) as c:
        archived = _finished_run(c)
        report = asyncio.run(archive_runs(api_store_url, str(tmp_path / "cold"),
                                          older_than=timedelta(0), tenant_id=owner))
        assert report.runs == 1
        hot = _finished_run(c)
    with api_server.client(api_server.key(other, "runner", "reader")) as c:
        _finished_run(c)

    with api_server.client(api_server.key(owner, "auditor")) as c:
        answer = c.get("/v1/audit/export", params=_period())
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/x-ndjson")
        lines = answer.content.splitlines(keepends=True)
        manifest = json.loads(lines[-1])["manifest"]
        events = [json.loads(line) for line in lines[:-1]]
        assert {e["runId"] for e in events} == {archived, hot}
        assert {e["tenantId"] for e in events} == {owner}
        assert manifest["tenantId"] == owner
        assert manifest["rows"] == len(events)
        assert manifest["coldRows"] > 0
        assert manifest["hotRows"] > 0
        assert manifest["sha256"] == hashlib.sha256(b"".join(lines[:-1])).hexdigest()
        # Another tenant is answered like a missing resource; bad input is coded.
        assert c.get("/v1/audit/export", params={**_period(), "tenant": other}
                     ).status_code == 404
        own = c.get("/v1/audit/export", params={**_period(), "tenant": owner})
        assert own.content.splitlines()[:-1] == answer.content.splitlines()[:-1]
        bad = c.get("/v1/audit/export", params={"from": "soon", "to": "2030-01-01"})
        assert bad.status_code == 422
        assert bad.json()["code"] == "USAGE_ERROR"
    # The same lines as `dvt audit export` writes.
    out = tmp_path / "cli"
    done = dvt(api_server.env, "audit", "export", "--tenant", owner, "--store", api_store_url,
               "--from", _period()["from"], "--to", _period()["to"], "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "events.jsonl").read_bytes() == b"".join(lines[:-1])

    with api_server.client(api_server.key(owner, "reader")) as c:
        assert c.get("/v1/audit/export", params=_period()).status_code == 403
    with api_server.client(api_server.admin(owner)) as c:
        assert c.get("/v1/audit/export", params=_period()).status_code == 200
    with api_server.client(api_server.key(other, "auditor")) as c:
        theirs = c.get("/v1/audit/export", params=_period()).content.splitlines()
        assert {json.loads(line).get("runId") for line in theirs[:-1]}.isdisjoint(
            {archived, hot})
