"""The HTTP service reads archived runs: the run stream, event pages and the run unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from api_helpers import ApiServer, SseMessage, chain_plan, sse_messages, tenant

from dvt_archive.archiver import archive_runs
from dvt_statestore_pg.testing import schema_store_url


@pytest.fixture(scope="module")
def api_store_url(dvt_postgres_dsn: str) -> Iterator[str]:
    """This module's store keeps no outbox: runs are archivable as soon as they end (the
    service would otherwise deliver their outbox rows at its own pace)."""
    with schema_store_url(dvt_postgres_dsn, prefix="dvt_api_archive") as url:
        yield url + "&outbox=false"


def _stream(c: httpx.Client, run_id: str) -> list[SseMessage]:
    with c.stream("GET", f"/v1/runs/{run_id}/stream") as s:
        assert s.status_code == 200
        return list(sse_messages(s.iter_lines()))  # ends by itself after the terminal event


def _pages(c: httpx.Client, run_id: str) -> list[object]:
    items: list[object] = []
    after = 0
    while True:
        page = c.get(f"/v1/runs/{run_id}/events", params={"after": after, "limit": 4}).json()
        if not page["items"]:
            return items
        items += page["items"]
        after = page["nextAfter"]


def test_an_archived_run_reads_the_same_through_the_service(
    api_server: ApiServer, api_store_url: str, tmp_path: Path,
) -> None:
    with api_server.client(api_server.key(tenant(), "runner", "reader")) as c:
        run_id = c.post("/v1/runs", json={"plan": chain_plan(5)}).json()["runId"]
        stream = _stream(c, run_id)
        assert stream[-1].event == "RunCompleted"
        pages = _pages(c, run_id)
        run = c.get(f"/v1/runs/{run_id}").json()

        report = asyncio.run(archive_runs(api_store_url, str(tmp_path),
                                          older_than=timedelta(0)))
        assert report.runs >= 1
        assert report.events >= len(pages)

        assert _stream(c, run_id) == stream
        assert _pages(c, run_id) == pages
        assert c.get(f"/v1/runs/{run_id}").json() == run
