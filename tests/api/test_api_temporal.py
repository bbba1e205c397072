"""End to end on Temporal: create a run over HTTP and follow its stream to the terminal event."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from api_helpers import ApiServer, gated_plan, sse_messages, start_server, stop_server, tenant


@pytest.fixture(scope="module")
def temporal_server(api_store_url: str, dvt_temporal_address: str,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """`dvt serve --engine temporal` with its workers, on the plugin's Temporal dev server."""
    tmp = tmp_path_factory.mktemp("api-temporal")
    server = start_server(api_store_url, tmp / "server.log", tmp / "home",
                          "--temporal-address", dvt_temporal_address, engine="temporal")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            assert stop_server(server) in (0, -15)


def test_a_gated_run_on_temporal_streams_to_its_end(temporal_server: ApiServer) -> None:
    t = tenant()
    key = temporal_server.key(t, "runner", "reader", "approver")
    with temporal_server.client(key) as c:
        created = c.post("/v1/runs", json={"plan": gated_plan()})
        assert created.status_code == 201, created.text
        run_id = created.json()["runId"]
        assert created.json()["engine"] == "temporal"
        seen = []
        with c.stream("GET", f"/v1/runs/{run_id}/stream") as s:
            for message in sse_messages(s.iter_lines()):
                seen.append(message)
                if message.event == "StepAwaitingApproval":
                    approved = c.post(f"/v1/runs/{run_id}/signals",
                                      json={"type": "APPROVE_STEP", "stepId": "signoff"})
                    assert approved.status_code == 202, approved.text
        assert seen[-1].event == "RunCompleted"
        log = c.get(f"/v1/runs/{run_id}/events", params={"limit": 1000}).json()["items"]
        assert [json.loads(m.data) for m in seen] == log
        assert c.get(f"/v1/runs/{run_id}").json()["status"] == "COMPLETED"
