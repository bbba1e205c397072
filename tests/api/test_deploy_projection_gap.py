"""A real projection gap in a real store, seen on a real server's /metrics crossing the
threshold of deploy/'s ProjectionGapDetected rule.

The gap is made the way it arises: a writer appends to a run's log through the store but stops
writing the run's snapshot (here the test's own store instance, whose snapshot interval is set
beyond reach; the server is untouched). The service's gauge reads the store and must show
the lag pass the rule's threshold, which no snapshot interval allows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from api_helpers import REPO, ApiServer, gated_plan, start_server, stop_server, tenant

import dvt_statestore_pg.appends as appends
from dvt_client import Client
from dvt_engine.models.events import Event
from dvt_engine.plugins import open_store

RULES = REPO / "deploy" / "prometheus" / "dvt-alerts.yml"


def _threshold() -> float:
    """The number ProjectionGapDetected compares dvt_snapshot_lag_events with."""
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    expr = next(str(r["expr"]) for r in rules if r["alert"] == "ProjectionGapDetected")
    match = re.fullmatch(r"\s*max\(dvt_snapshot_lag_events\)\s*>\s*(\d+)\s*", expr)
    assert match, expr
    return float(match.group(1))


def _scrape(server: ApiServer, name: str) -> float:
    text = httpx.get(server.base_url + "/metrics", timeout=30).text
    match = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    assert match, f"{name} is not exported"
    return float(match.group(1))


@pytest.fixture(scope="module")
def server(api_store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """`dvt serve` that reads the store's gauges on every scrape."""
    tmp: Path = tmp_path_factory.mktemp("gap")
    started = start_server(api_store_url, tmp / "server.log", tmp / "home",
                           env={"DVT_API_METRICS_STORE_TTL_S": "0"})
    try:
        yield started
    finally:
        assert stop_server(started) == 0


def _event(template: Event, i: int) -> Event:
    key = hashlib.sha256(f"{template.run_id}/note/{i}".encode()).hexdigest()
    return Event(event_id=f"note-{i}", event_type="OperatorNoted",
                 tenant_id=template.tenant_id, project_id=template.project_id,
                 environment_id=template.environment_id, run_id=template.run_id,
                 plan_id=template.plan_id, plan_version=template.plan_version,
                 idempotency_key=key, emitted_at=datetime.now(UTC), emitted_by="gap-test",
                 payload={"n": i})


async def test_a_stale_snapshot_crosses_the_gap_alert_threshold(
        server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    threshold = _threshold()
    key = server.key(tenant(), "runner", "reader", "approver")
    with Client(server.base_url, key) as dvt:
        run = dvt.runs.create(gated_plan())
        first = next(e for e in dvt.runs.stream(run.run_id)
                     if e.event_type == "StepAwaitingApproval")
        assert _scrape(server, "dvt_snapshot_lag_events") < threshold  # healthy
        # A writer that no longer writes snapshots appends past the threshold.
        monkeypatch.setattr(appends, "_snapshot_every", lambda snapshot: 10**9)
        store = await open_store(server.store_url)
        try:
            template = Event.model_validate(first.model_dump(by_alias=True))
            for i in range(int(threshold) + 10):
                await store.append(_event(template, i))
        finally:
            await store.close()
        assert _scrape(server, "dvt_snapshot_lag_events") > threshold
        # The run is still readable (readers apply the tail) and still finishes.
        assert dvt.runs.get(run.run_id).last_event_seq > threshold
        dvt.runs.approve(run.run_id, "signoff")
        assert dvt.runs.wait(run.run_id).status == "COMPLETED"
    # Its terminal snapshot is written, so the gauge falls back below the threshold.
    assert _scrape(server, "dvt_snapshot_lag_events") < threshold
