"""Tenant limits over HTTP against a real `dvt serve` (limits enforced) on PostgreSQL: read and
set per tenant, coded refusals of bad limits, 429 with Retry-After, QUEUED runs, metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_helpers import (
    ApiServer,
    chain_plan,
    dvt,
    gated_plan,
    sse_messages,
    start_server,
    stop_server,
    tenant,
)


@pytest.fixture(scope="module")
def limited(api_store_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ApiServer]:
    """A service that enforces tenant limits (DVT_LIMITS_ENABLED)."""
    tmp = tmp_path_factory.mktemp("limits")
    server = start_server(api_store_url, tmp / "server.log", tmp / "home",
                          env={"DVT_LIMITS_ENABLED": "true"})
    try:
        yield server
    finally:
        assert stop_server(server) == 0


def _until(c: httpx.Client, event_type: str, run_id: str) -> None:
    """Follow the tenant's stream from its start until the run's ``event_type`` (no polling)."""
    with c.stream("GET", "/v1/stream", params={"after": "0"}) as s:
        for message in sse_messages(s.iter_lines()):
            data = json.loads(message.data) if message.data else {}
            if message.event == event_type and data.get("runId") == run_id:
                return
    raise AssertionError(f"{event_type} of {run_id} never came")


def _metric(c: httpx.Client, name: str, **labels: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_limits_read_and_set_per_tenant_by_admins_only(limited: ApiServer) -> None:
    a, b = tenant(), tenant()
    with limited.client(limited.admin(a)) as c:
        first = c.get("/v1/limits")
        assert first.status_code == 200, first.text
        assert first.json()["overflow"] == "reject"
        changed = c.put("/v1/limits", json={"maxActiveRuns": 3, "overflow": "queue"})
        assert changed.status_code == 200, changed.text
        assert changed.json()["maxActiveRuns"] == 3
        assert changed.json()["overflow"] == "queue"
        assert changed.json()["maxPlanSteps"] == first.json()["maxPlanSteps"]
        assert c.get("/v1/limits").json()["maxActiveRuns"] == 3
    with limited.client(limited.admin(b)) as c:
        # Another tenant's admin sees its own (default) limits, never a's.
        assert c.get("/v1/limits").json() == first.json()
    with limited.client(limited.key(a, "runner", "reader", "operator")) as c:
        for answer in (c.get("/v1/limits"), c.put("/v1/limits", json={"maxActiveRuns": 9})):
            assert answer.status_code == 403
            assert answer.json()["code"] == "FORBIDDEN"
    with limited.client(limited.admin(a)) as c:
        assert c.get("/v1/limits").json()["maxActiveRuns"] == 3


@pytest.mark.parametrize("body", [{"maxActiveRuns": -1}, {"maxActiveRuns": 0},
                                  {"runStartsPerMinute": 10**15}, {"signalsPerMinute": "10"},
                                  {"maxPlanBytes": 1.5}, {"maxQueuedRuns": True},
                                  {"overflow": "drop"}, {"maxActiveRunz": 2}])
def test_bad_limits_are_refused_with_a_coded_problem(limited: ApiServer,
                                                     body: dict[str, Any]) -> None:
    with limited.client(limited.admin("bad-limits")) as c:
        before = c.get("/v1/limits").json()
        answer = c.put("/v1/limits", json=body)
        assert answer.status_code == 422
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["code"] == "LIMITS_INVALID"
        assert c.get("/v1/limits").json() == before


def test_over_the_limit_a_start_is_refused_with_429_and_retry_after(limited: ApiServer) -> None:
    t = tenant()
    with limited.client(limited.admin(t)) as c:
        assert c.put("/v1/limits", json={"maxActiveRuns": 1}).status_code == 200
        before = _metric(c, "dvt_limit_rejections_total", tenant=t, kind="active_runs")
    with limited.client(limited.key(t, "runner", "reader")) as c:
        first = c.post("/v1/runs", json={"plan": gated_plan(), "runId": "one"})
        assert first.status_code == 201, first.text
        second = c.post("/v1/runs", json={"plan": gated_plan(), "runId": "two"})
        assert second.status_code == 429
        assert second.json()["code"] == "RATE_LIMITED"
        assert int(second.headers["Retry-After"]) >= 1
        assert c.get("/v1/runs/two").status_code == 404
        assert _metric(c, "dvt_limit_rejections_total", tenant=t, kind="active_runs") \
            == before + 1


def test_queued_runs_answer_202_show_queued_cancel_and_start_when_a_slot_frees(
        limited: ApiServer) -> None:
    t = tenant()
    with limited.client(limited.admin(t)) as c:
        assert c.put("/v1/limits", json={"maxActiveRuns": 1, "overflow": "queue"}
                     ).status_code == 200
    with limited.client(limited.key(t, "runner", "reader", "operator", "approver")) as c:
        gate = c.post("/v1/runs", json={"plan": gated_plan(), "runId": "gate"})
        assert gate.status_code == 201, gate.text
        waiting = c.post("/v1/runs", json={"plan": chain_plan(), "runId": "next"})
        assert waiting.status_code == 202, waiting.text
        assert waiting.json()["status"] == "QUEUED"
        assert waiting.headers["Location"] == "/v1/runs/next"
        dropped = c.post("/v1/runs", json={"plan": chain_plan(), "runId": "dropped"})
        assert dropped.status_code == 202
        assert c.get("/v1/runs/next").json()["status"] == "QUEUED"
        assert _metric(c, "dvt_admission_queue_depth", tenant=t) == 2
        cancel = c.post("/v1/runs/dropped/signals", json={"type": "CANCEL"})
        assert cancel.status_code == 202, cancel.text
        assert c.get("/v1/runs/dropped").json()["status"] == "CANCELLED"
        assert c.post("/v1/runs/next/signals", json={"type": "PAUSE"}).status_code == 409
        _until(c, "StepAwaitingApproval", "gate")
        approved = c.post("/v1/runs/gate/signals",
                          json={"type": "APPROVE_STEP", "stepId": "signoff"})
        assert approved.status_code == 202, approved.text
        _until(c, "RunCompleted", "next")
        assert c.get("/v1/runs/next").json()["status"] == "COMPLETED"
        assert c.get("/v1/runs/dropped").json()["status"] == "CANCELLED"
        assert _metric(c, "dvt_admission_queue_depth", tenant=t) == 0


def test_cli_limits_set_and_show_change_what_the_running_service_enforces(
        limited: ApiServer) -> None:
    t = tenant()
    done = dvt(limited.env, "limits", "set", "--tenant", t, "--store", limited.store_url,
               "--max-active-runs", "7", "--overflow", "queue", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["maxActiveRuns"] == 7
    with limited.client(limited.admin(t)) as c:
        assert c.get("/v1/limits").json()["maxActiveRuns"] == 7
        assert c.get("/v1/limits").json()["overflow"] == "queue"
    shown = dvt(limited.env, "limits", "show", "--tenant", t, "--store", limited.store_url,
                "--json")
    assert json.loads(shown.stdout)["maxActiveRuns"] == 7
    reset = dvt(limited.env, "limits", "set", "--tenant", t, "--store", limited.store_url,
                "--reset", "maxActiveRuns", "--json")
    assert json.loads(reset.stdout)["maxActiveRuns"] == 100
    refused = dvt(limited.env, "limits", "set", "--tenant", t, "--store", limited.store_url,
                  "--max-active-runs", "-3", "--json")
    assert refused.returncode != 0
    assert "LIMITS_INVALID" in refused.stdout + refused.stderr
