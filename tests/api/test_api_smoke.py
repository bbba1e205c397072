"""The basics over HTTP: health, a key, a plan, a run to its end."""

from __future__ import annotations

from api_helpers import ApiServer, chain_plan, tenant


def test_a_run_created_over_http_completes(api_server: ApiServer) -> None:
    t = tenant()
    key = api_server.key(t, "runner", "reader")
    with api_server.client(key) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").json()["checks"] == {"store": "ok", "engine": "ok"}
        created = c.post("/v1/runs", json={"plan": chain_plan(3), "runId": "r-1"})
        assert created.status_code == 201, created.text
        assert created.headers["location"] == "/v1/runs/r-1"
        with c.stream("GET", "/v1/runs/r-1/stream") as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            body = "".join(s.iter_text())
        assert "event: RunCompleted" in body
        assert body.startswith(": stream of run events\r\nretry: 2000\r\n")
        run = c.get("/v1/runs/r-1").json()
        assert run["status"] == "COMPLETED"
        assert run["engine"] == "reference"
