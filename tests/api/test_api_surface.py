"""The documented surface: the checked-in OpenAPI document, metrics, and paging of runs."""

from __future__ import annotations

import json
import subprocess
import sys

from api_helpers import REPO, ApiServer, chain_plan, tenant

from dvt_api.openapi import DOC_PATH, render


def test_the_checked_in_openapi_document_matches_the_code(api_server: ApiServer) -> None:
    assert DOC_PATH.read_text("utf-8") == render(), "run python -m dvt_api.openapi"
    check = subprocess.run([sys.executable, "-m", "dvt_api.openapi", "--check"], cwd=REPO,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    with api_server.client() as c:
        served = c.get("/openapi.json").json()
        assert served == json.loads(DOC_PATH.read_text("utf-8"))
        assert served["openapi"].startswith("3.1")
        assert c.get("/docs").status_code == 200
    paths = set(served["paths"])
    assert {"/v1/runs", "/v1/runs/{runId}", "/v1/runs/{runId}/events",
            "/v1/runs/{runId}/stream", "/v1/runs/{runId}/signals", "/v1/plans",
            "/v1/plans/validate", "/v1/plans/{sha256}", "/v1/api-keys",
            "/v1/api-keys/{keyId}", "/healthz", "/readyz", "/metrics"} <= paths


def test_runs_page_newest_first_by_cursor_without_gaps_or_repeats(api_server: ApiServer) -> None:
    t = tenant()
    with api_server.client(api_server.key(t, "runner", "reader")) as c:
        made = [c.post("/v1/runs", json={"plan": chain_plan(1), "runId": f"r-{i}"}).json()
                for i in range(5)]
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = c.get("/v1/runs", params=params).json()
            seen += [r["runId"] for r in page["items"]]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert seen == [r["runId"] for r in reversed(made)]
        completed = c.get("/v1/runs", params={"status": "FAILED"}).json()["items"]
        assert completed == []


def test_metrics_count_requests_by_route_template_without_tenant_labels(
        api_server: ApiServer) -> None:
    t = tenant()
    with api_server.client(api_server.key(t, "runner", "reader")) as c:
        run_id = c.post("/v1/runs", json={"plan": chain_plan(1)}).json()["runId"]
        assert c.get(f"/v1/runs/{run_id}").status_code == 200
        text = c.get("/metrics").text
    assert 'dvt_http_requests_total{method="GET",route="/v1/runs/{runId}",status="200"}' in text
    assert "dvt_http_request_duration_seconds_bucket" in text
    assert 'dvt_runs_started_total{engine="reference"}' in text
    assert t not in text
    assert run_id not in text


def test_serve_refuses_the_memory_store_without_dev(api_server: ApiServer) -> None:
    from api_helpers import dvt

    done = dvt(api_server.env, "serve", "--port", "0", "--store", "memory://")
    assert done.returncode == 2
    assert "USAGE_ERROR" in done.stderr
    assert "--dev" in done.stderr or "dev=True" in done.stderr


def test_a_dev_service_prints_a_first_key_on_stdout_and_never_logs_it(tmp_path: object) -> None:
    import os
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    env = {**os.environ, "DVT_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dvt_cli", "serve", "--dev", "--port", "0"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        key = process.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert key.startswith("dvt_sk_")
        log: list[str] = []
        for line in process.stderr:
            log.append(line)
            if "Uvicorn running on" in line:
                break
        base = json.loads(log[-1])["msg"].split("running on ", 1)[1].split()[0]
        import httpx

        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
            assert c.get("/v1/runs").json() == {"items": [], "nextCursor": None}
            assert c.get("/v1/api-keys").json()["items"][0]["tenantId"] == "default"
    finally:
        process.terminate()
        rest = process.communicate(timeout=30)[1]
    assert key not in "".join(log) + rest
