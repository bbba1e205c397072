"""Signals over HTTP: roles per signal type, the core's refusal codes, the key as the actor."""

from __future__ import annotations

from api_helpers import ApiServer, chain_plan, gated_plan, sse_messages, tenant


def _wait_for(c: object, run_id: str, event_type: str) -> None:
    """Follow the stream until ``event_type`` arrives (the stream pushes it; no polling)."""
    import httpx

    assert isinstance(c, httpx.Client)
    with c.stream("GET", f"/v1/runs/{run_id}/stream") as s:
        for message in sse_messages(s.iter_lines()):
            if message.event == event_type:
                return
    raise AssertionError(f"{event_type} never came")


def test_pause_resume_and_approve_through_http(api_server: ApiServer) -> None:
    t = tenant()
    runner = api_server.key(t, "runner", "reader")
    operator, op_id = api_server.key_and_id(t, "operator", "reader")
    approver, ap_id = api_server.key_and_id(t, "approver", "reader")
    with api_server.client(runner) as c:
        run_id = c.post("/v1/runs", json={"plan": gated_plan()}).json()["runId"]
        _wait_for(c, run_id, "StepAwaitingApproval")
        # Neither a reader/runner nor an operator may approve; a reader cannot pause.
        denied = c.post(f"/v1/runs/{run_id}/signals", json={"type": "PAUSE"})
        assert denied.status_code == 403
        assert denied.json()["code"] == "FORBIDDEN"
    with api_server.client(operator) as c:
        denied = c.post(f"/v1/runs/{run_id}/signals",
                        json={"type": "APPROVE_STEP", "stepId": "signoff"})
        assert denied.status_code == 403
        assert denied.json()["code"] == "FORBIDDEN"
        paused = c.post(f"/v1/runs/{run_id}/signals",
                        json={"type": "PAUSE", "reason": "maintenance", "signalId": "p-1"})
        assert paused.status_code == 202, paused.text
        assert paused.json()["decision"] == "accepted"
        again = c.post(f"/v1/runs/{run_id}/signals",
                       json={"type": "PAUSE", "reason": "maintenance", "signalId": "p-1"})
        assert again.status_code == 202
        assert again.json()["duplicate"] is True
        assert again.json()["runSeq"] == paused.json()["runSeq"]
        _wait_for(c, run_id, "RunPaused")
        assert c.post(f"/v1/runs/{run_id}/signals", json={"type": "RESUME"}).status_code == 202
    with api_server.client(approver) as c:
        missing = c.post(f"/v1/runs/{run_id}/signals", json={"type": "APPROVE_STEP"})
        assert missing.status_code == 422
        assert missing.json()["code"] == "SIGNAL_INVALID_PAYLOAD"
        ok = c.post(f"/v1/runs/{run_id}/signals",
                    json={"type": "APPROVE_STEP", "stepId": "signoff"})
        assert ok.status_code == 202, ok.text
        _wait_for(c, run_id, "RunCompleted")
        events = c.get(f"/v1/runs/{run_id}/events", params={"limit": 1000}).json()["items"]
    # The decision records name the key that sent each signal as the actor.
    decided = [(e["payload"]["signalType"], e["payload"]["actor"]["id"]) for e in events
               if e["eventType"] in ("SignalAccepted", "SignalRejected")]
    assert ("PAUSE", op_id) in decided
    assert ("RESUME", op_id) in decided
    assert ("APPROVE_STEP", ap_id) in decided
    with api_server.client(approver) as c:
        done = c.post(f"/v1/runs/{run_id}/signals", json={"type": "APPROVE_RUN"})
        assert done.status_code == 409, done.text
        assert done.json()["code"] == "RUN_TERMINAL"


def test_operator_signals_on_a_finished_run_keep_the_core_codes(api_server: ApiServer) -> None:
    t = tenant()
    with api_server.client(api_server.key(t, "runner", "reader", "operator")) as c:
        run_id = c.post("/v1/runs", json={"plan": chain_plan(1)}).json()["runId"]
        _wait_for(c, run_id, "RunCompleted")
        answer = c.post(f"/v1/runs/{run_id}/signals", json={"type": "CANCEL"})
        assert answer.status_code == 409
        assert answer.json()["code"] == "RUN_TERMINAL"
        unknown = c.post(f"/v1/runs/{run_id}/signals", json={"type": "SHUTDOWN"})
        assert unknown.status_code == 422
        assert unknown.json()["code"] == "REQUEST_INVALID"
