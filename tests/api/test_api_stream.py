"""A run's SSE stream and event pages: resume by Last-Event-ID loses and repeats nothing."""

from __future__ import annotations

import json
import random

from api_helpers import ApiServer, SseMessage, chain_plan, gated_plan, sse_messages, tenant


def _read(c: object, run_id: str, last: str | None, take: int | None,
          until: str | None = None) -> list[SseMessage]:
    """Up to ``take`` messages (all when None), stopping early after an ``until`` event (the
    run sends nothing more until it is approved)."""
    import httpx

    assert isinstance(c, httpx.Client)
    headers = {"Last-Event-ID": last} if last is not None else {}
    got: list[SseMessage] = []
    with c.stream("GET", f"/v1/runs/{run_id}/stream", headers=headers) as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        for message in sse_messages(s.iter_lines()):
            got.append(message)
            if (take is not None and len(got) >= take) or message.event == until:
                break  # disconnect mid-stream
    return got


def _log(c: object, run_id: str) -> list[dict[str, object]]:
    import httpx

    assert isinstance(c, httpx.Client)
    items: list[dict[str, object]] = []
    after = 0
    while True:
        page = c.get(f"/v1/runs/{run_id}/events", params={"after": after, "limit": 3}).json()
        items += page["items"]
        if not page["items"]:
            return items
        assert page["nextAfter"] == page["items"][-1]["runSeq"]
        after = page["nextAfter"]


def test_resuming_at_random_points_yields_the_log_exactly_once(api_server: ApiServer) -> None:
    rng = random.Random(20261205)
    t = tenant()
    key = api_server.key(t, "runner", "reader", "approver")
    with api_server.client(key) as c:
        run_id = c.post("/v1/runs", json={"plan": gated_plan()}).json()["runId"]
        seen: list[SseMessage] = []
        last: str | None = None
        # Live part: the run waits at its gate, so these reads end by disconnecting.
        while not any(m.event == "StepAwaitingApproval" for m in seen):
            seen += _read(c, run_id, last, rng.randint(1, 2), until="StepAwaitingApproval")
            last = seen[-1].id
        assert c.post(f"/v1/runs/{run_id}/signals",
                      json={"type": "APPROVE_STEP", "stepId": "signoff"}).status_code == 202
        while not seen or seen[-1].event != "RunCompleted":
            seen += _read(c, run_id, last, rng.randint(1, 3))
            last = seen[-1].id
        # The stream ends by itself after the terminal event.
        assert _read(c, run_id, None, None)[-1].event == "RunCompleted"
        assert _read(c, run_id, last, None) == []
        log = _log(c, run_id)
    ids = [int(m.id or 0) for m in seen]
    assert ids == list(range(1, len(log) + 1))
    assert [json.loads(m.data) for m in seen] == log
    assert [m.event for m in seen] == [e["eventType"] for e in log]


def test_after_query_resumes_like_last_event_id_and_bad_cursors_are_refused(
        api_server: ApiServer) -> None:
    t = tenant()
    with api_server.client(api_server.key(t, "runner", "reader")) as c:
        run_id = c.post("/v1/runs", json={"plan": chain_plan(2)}).json()["runId"]
        full = _read(c, run_id, None, None)
        with c.stream("GET", f"/v1/runs/{run_id}/stream", params={"after": 3}) as s:
            tail = list(sse_messages(s.iter_lines()))
        assert tail == full[3:]
        for bad in ("-1", "abc", "1e3", "9" * 40):
            answer = c.get(f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": bad})
            assert answer.status_code == 422
            assert answer.json()["code"] == "REQUEST_INVALID"
        assert c.get(f"/v1/runs/{run_id}/events", params={"limit": 1001}).status_code == 422
