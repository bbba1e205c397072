"""Custom signals (plan v1.3) over HTTP: name and payload in the body, the plan's schema and
roles, problem+json codes for what the core refuses."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import ApiServer, sse_messages, tenant


def _plan() -> dict[str, Any]:
    schema = {"type": "object", "required": ["rows"], "additionalProperties": False,
              "properties": {"rows": {"type": "integer", "minimum": 0}}}
    return {
        "metadata": {"planId": "http-wait", "planVersion": "1", "schemaVersion": "v1.3",
                     "signals": {"file-arrived": {"payload": schema, "roles": ["engineer"]}}},
        "steps": [
            {"stepId": "ready", "kind": "noop", "waitForSignal": {"name": "file-arrived"}},
            {"stepId": "load", "kind": "echo", "dependsOn": ["ready"], "params": {"to": "wh"}},
        ],
    }


def _wait_for(c: Any, run_id: str, event_type: str) -> None:
    with c.stream("GET", f"/v1/runs/{run_id}/stream") as s:
        for message in sse_messages(s.iter_lines()):
            if message.event == event_type:
                return
    raise AssertionError(f"{event_type} never came")


def test_a_custom_signal_completes_a_wait_through_http(api_server: ApiServer) -> None:
    t = tenant()
    operator, op_id = api_server.key_and_id(t, "runner", "reader", "operator")
    approver = api_server.key(t, "approver")
    reader = api_server.key(t, "reader")
    with api_server.client(operator) as c:
        run_id = c.post("/v1/runs", json={"plan": _plan()}).json()["runId"]
        _wait_for(c, run_id, "StepAwaitingApproval")
        url = f"/v1/runs/{run_id}/signals"
        unknown = c.post(url, json={"type": "CUSTOM", "name": "file-landed", "payload": {}})
        assert unknown.status_code == 422, unknown.text
        assert unknown.json()["code"] == "SIGNAL_UNKNOWN"
        invalid = c.post(url, json={"type": "CUSTOM", "name": "file-arrived",
                                    "payload": {"rows": "many"}})
        assert invalid.status_code == 422
        assert invalid.json()["code"] == "SIGNAL_INVALID_PAYLOAD"
        assert "many" not in invalid.text
        nameless = c.post(url, json={"type": "CUSTOM", "payload": {"rows": 1}})
        assert nameless.status_code == 422
        assert nameless.json()["code"] == "SIGNAL_INVALID_PAYLOAD"
    with api_server.client(reader) as c:
        denied = c.post(url, json={"type": "CUSTOM", "name": "file-arrived",
                                   "payload": {"rows": 1}})
        assert denied.status_code == 403
        assert denied.json()["code"] == "FORBIDDEN"
    with api_server.client(approver) as c:
        # The plan allows engineers: an approver key reaches the core, which refuses and records.
        refused = c.post(url, json={"type": "CUSTOM", "name": "file-arrived",
                                    "payload": {"rows": 1}})
        assert refused.status_code == 403
        assert refused.json()["code"] == "SIGNAL_UNAUTHORIZED"
    with api_server.client(operator) as c:
        ok = c.post(url, json={"type": "CUSTOM", "name": "file-arrived",
                               "payload": {"rows": 42}, "signalId": "arrived-1"})
        assert ok.status_code == 202, ok.text
        assert ok.json()["decision"] == "accepted"
        _wait_for(c, run_id, "RunCompleted")
        late = c.post(url, json={"type": "CUSTOM", "name": "file-arrived",
                                 "payload": {"rows": 1}})
        assert late.status_code == 409
        assert late.json()["code"] == "RUN_TERMINAL"
        run = c.get(f"/v1/runs/{run_id}").json()
        events = c.get(f"/v1/runs/{run_id}/events", params={"limit": 1000}).json()["items"]
    ready = next(s for s in run["steps"] if s["stepId"] == "ready")
    assert ready["output"] == {"rows": 42}
    decided = [(e["eventType"], e["payload"]["errorCode"], e["payload"]["actor"]["id"])
               for e in events if e["eventType"] in ("SignalAccepted", "SignalRejected")]
    assert decided == [("SignalRejected", "SIGNAL_UNAUTHORIZED", decided[0][2]),
                       ("SignalAccepted", None, op_id),
                       ("SignalRejected", "RUN_TERMINAL", op_id)]


def test_the_sdk_sends_a_custom_signal(api_server: ApiServer) -> None:
    from dvt_client import Client, Conflict, InvalidRequest

    key = api_server.key(tenant(), "runner", "reader", "operator")
    with Client(api_server.base_url, key) as dvt:
        run = dvt.runs.create(_plan())
        events = dvt.runs.stream(run.run_id)
        next(e for e in events if e.event_type == "StepAwaitingApproval")
        with pytest.raises(InvalidRequest) as bad:
            dvt.runs.send(run.run_id, "file-arrived", {"rows": -1})
        assert bad.value.code == "SIGNAL_INVALID_PAYLOAD"
        answer = dvt.runs.send(run.run_id, "file-arrived", {"rows": 5}, signal_id="s-1")
        assert answer.decision == "accepted"
        assert dvt.runs.send(run.run_id, "file-arrived", {"rows": 6},
                             signal_id="s-1").duplicate is True
        done = dvt.runs.wait(run.run_id)
        assert done.status == "COMPLETED"
        with pytest.raises(Conflict) as late:
            dvt.runs.send(run.run_id, "file-arrived", {"rows": 7})
        assert late.value.code == "RUN_TERMINAL"
