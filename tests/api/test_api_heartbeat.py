"""An idle run stream sends comment heartbeats (here every 0.3 s, set through DVT_API_*)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_helpers import ApiServer, gated_plan, start_server, stop_server, tenant


@pytest.fixture(scope="module")
def fast_heartbeat_server(api_store_url: str, tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[ApiServer]:
    tmp = tmp_path_factory.mktemp("api-heartbeat")
    server = start_server(api_store_url, tmp / "server.log", tmp / "home",
                          env={"DVT_API_SSE_HEARTBEAT_S": "0.3"})
    try:
        yield server
    finally:
        if server.process.poll() is None:
            assert stop_server(server) == 0


def test_a_run_waiting_at_a_gate_keeps_its_stream_alive(fast_heartbeat_server: ApiServer) -> None:
    server = fast_heartbeat_server
    t = tenant()
    with server.client(server.key(t, "runner", "reader")) as c:
        run_id = c.post("/v1/runs", json={"plan": gated_plan()}).json()["runId"]
        waiting, pings = False, 0
        with c.stream("GET", f"/v1/runs/{run_id}/stream") as s:
            for line in s.iter_lines():
                waiting = waiting or line == "event: StepAwaitingApproval"
                if waiting and line.startswith(": ping"):
                    pings += 1
                    if pings == 3:
                        break
        assert pings == 3
        assert c.get(f"/v1/runs/{run_id}").json()["status"] == "RUNNING"
