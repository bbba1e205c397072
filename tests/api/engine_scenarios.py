"""Run lifecycles over HTTP that every engine behind `dvt serve` must carry the same way.

Each scenario follows one SSE stream to the run's terminal event, sending the signals as the
events that call for them arrive (the stream pushes them; nothing polls or sleeps).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from api_helpers import ApiServer, SseMessage, gated_plan, sse_messages, tenant


def _signal(c: httpx.Client, run_id: str, body: dict[str, Any]) -> None:
    answer = c.post(f"/v1/runs/{run_id}/signals", json=body)
    assert answer.status_code == 202, answer.text
    assert answer.json()["decision"] == "accepted", answer.text


def _follow(c: httpx.Client, run_id: str, on_event: dict[str, dict[str, Any]]
            ) -> list[SseMessage]:
    """The stream to its end; on the first event of each type in ``on_event``, send that signal."""
    seen: list[SseMessage] = []
    pending = dict(on_event)
    with c.stream("GET", f"/v1/runs/{run_id}/stream") as s:
        assert s.status_code == 200
        for message in sse_messages(s.iter_lines()):
            seen.append(message)
            if message.event in pending:
                _signal(c, run_id, pending.pop(message.event))
    assert not pending, f"never saw {sorted(pending)}"
    return seen


def _the_stream_is_the_log(c: httpx.Client, run_id: str, seen: list[SseMessage]) -> None:
    log = c.get(f"/v1/runs/{run_id}/events", params={"limit": 1000}).json()["items"]
    assert [json.loads(m.data) for m in seen] == log
    assert [m.id for m in seen] == [str(e["runSeq"]) for e in log]


def pause_resume_approve(server: ApiServer, engine: str) -> None:
    """Created, paused at the gate, resumed, approved: the stream ends with RunCompleted."""
    key = server.key(tenant(), "runner", "reader", "operator", "approver")
    with server.client(key) as c:
        created = c.post("/v1/runs", json={"plan": gated_plan()})
        assert created.status_code == 201, created.text
        assert created.json()["engine"] == engine
        run_id = created.json()["runId"]
        seen = _follow(c, run_id, {
            "StepAwaitingApproval": {"type": "PAUSE", "reason": "change freeze"},
            "RunPaused": {"type": "RESUME"},
            "RunResumed": {"type": "APPROVE_STEP", "stepId": "signoff"},
        })
        kinds = [m.event for m in seen]
        assert kinds[-1] == "RunCompleted"
        assert kinds.index("RunPaused") < kinds.index("RunResumed") < kinds.index("RunCompleted")
        _the_stream_is_the_log(c, run_id, seen)
        run = c.get(f"/v1/runs/{run_id}").json()
        assert run["status"] == "COMPLETED"
        assert run["engine"] == engine


def cancel_at_the_gate(server: ApiServer, engine: str) -> None:
    """Cancelled while awaiting approval: RunCancelled ends the stream, later signals are 409."""
    key = server.key(tenant(), "runner", "reader", "operator", "approver")
    with server.client(key) as c:
        created = c.post("/v1/runs", json={"plan": gated_plan()},
                         headers={"Idempotency-Key": f"cancel-{engine}"})
        assert created.status_code == 201, created.text
        run_id = created.json()["runId"]
        seen = _follow(c, run_id, {"StepAwaitingApproval": {"type": "CANCEL", "reason": "no"}})
        assert seen[-1].event == "RunCancelled"
        started = [json.loads(m.data).get("stepId") for m in seen if m.event == "StepStarted"]
        assert "publish" not in started
        _the_stream_is_the_log(c, run_id, seen)
        assert c.get(f"/v1/runs/{run_id}").json()["status"] == "CANCELLED"
        late = c.post(f"/v1/runs/{run_id}/signals",
                      json={"type": "APPROVE_STEP", "stepId": "signoff"})
        assert late.status_code == 409, late.text
        assert late.json()["code"] == "RUN_TERMINAL"
        replay = c.post("/v1/runs", json={"plan": gated_plan()},
                        headers={"Idempotency-Key": f"cancel-{engine}"})
        assert replay.status_code == 200
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["runId"] == run_id
