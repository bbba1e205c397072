"""Run labels and the run-list filters (planId, label, createdAfter, createdBefore) over HTTP."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from api_helpers import ApiServer, chain_plan, tenant


def _start(c: httpx.Client, plan_id: str, labels: dict[str, str] | None = None,
           **body: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"plan": chain_plan(1, plan_id=plan_id), **body}
    if labels is not None:
        payload["labels"] = labels
    answer = c.post("/v1/runs", json=payload)
    assert answer.status_code == 201, answer.text
    doc: dict[str, Any] = answer.json()
    return doc


def _ids(c: httpx.Client, **params: Any) -> list[str]:
    answer = c.get("/v1/runs", params={"limit": 200, **params})
    assert answer.status_code == 200, answer.text
    assert answer.json()["nextCursor"] is None
    return [r["runId"] for r in answer.json()["items"]]


def _refused(answer: httpx.Response, code: str, path: str) -> None:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["code"] == code
    assert any(e["path"].startswith(path) for e in answer.json()["errors"]), answer.json()


def test_labels_round_trip_and_each_filter(api_server: ApiServer) -> None:
    with api_server.client(api_server.key(tenant(), "runner", "reader")) as c:
        runs = [
            _start(c, "orders", {"trigger": "cron", "team": "data"}),
            _start(c, "orders", {"team": "data", "trigger": "manual"}),
            _start(c, "billing", {"team": "finance", "app.example.com/tier": "gold"}),
            _start(c, "billing"),
        ]
        ids = [r["runId"] for r in runs]
        assert runs[0]["labels"] == {"team": "data", "trigger": "cron"}
        assert runs[3]["labels"] == {}
        one = c.get(f"/v1/runs/{ids[2]}").json()
        assert one["labels"] == {"app.example.com/tier": "gold", "team": "finance"}
        listed = c.get("/v1/runs").json()["items"]
        assert [r["labels"] for r in listed] == [r["labels"] for r in reversed(runs)]

        assert _ids(c, planId="orders") == [ids[1], ids[0]]
        assert _ids(c, planId="none-such") == []
        assert _ids(c, label="team:data") == [ids[1], ids[0]]
        assert _ids(c, label=["team:data", "trigger:cron"]) == [ids[0]]
        assert _ids(c, label="app.example.com/tier:gold") == [ids[2]]
        assert _ids(c, label="team:Data") == []
        created = [r["createdAt"] for r in runs]
        assert _ids(c, createdAfter=created[1]) == [ids[3], ids[2], ids[1]]
        assert _ids(c, createdBefore=created[1]) == [ids[0]]
        assert _ids(c, createdAfter=created[1], createdBefore=created[3]) == [ids[2], ids[1]]
        assert _ids(c, createdAfter="2100-01-01T00:00:00Z") == []
        assert _ids(c, createdBefore="2000-01-01T00:00:00+02:00") == []
        # Combined: every filter must hold.
        assert _ids(c, planId="orders", label="team:data", createdAfter=created[1]) == [ids[1]]
        assert _ids(c, planId="billing", label="team:data") == []
        every_status = ["PENDING", "APPROVED", "RUNNING", "PAUSED", "COMPLETED", "FAILED",
                        "CANCELLED"]
        assert _ids(c, label="team:data", status=every_status) == [ids[1], ids[0]]
        assert _ids(c, label="team:data", status="FAILED") == []


def test_cursor_pages_through_filtered_runs_without_gap_or_repeat(
        api_server: ApiServer) -> None:
    with api_server.client(api_server.key(tenant(), "runner", "reader")) as c:
        for i in range(11):
            _start(c, "orders" if i % 4 else "billing",
                   {"team": "data" if i % 3 else "web", "n": str(i)})
        params = {"label": "team:data", "planId": "orders"}
        wanted = _ids(c, **params)
        assert len(wanted) == 5  # i in 1, 2, 5, 7, 10
        paged: list[str] = []
        cursor = None
        pages = 0
        while True:
            query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
            answer = c.get("/v1/runs", params=query)
            assert answer.status_code == 200, answer.text
            paged += [r["runId"] for r in answer.json()["items"]]
            pages += 1
            cursor = answer.json()["nextCursor"]
            if cursor is None:
                break
            # Another filter with this cursor is refused; another page size is not a filter.
            _refused(c.get("/v1/runs", params={"label": "team:web", "cursor": cursor}),
                     "REQUEST_INVALID", "query/cursor")
            _refused(c.get("/v1/runs", params={"cursor": cursor}), "REQUEST_INVALID",
                     "query/cursor")
            assert c.get("/v1/runs", params={**params, "limit": 1, "cursor": cursor}
                         ).status_code == 200
        assert paged == wanted
        assert pages == 3
        # The same instant with another offset is the same filter for the cursor.
        windowed = c.get("/v1/runs", params={"createdAfter": "2000-01-01T00:00:00Z", "limit": 1})
        cursor = windowed.json()["nextCursor"]
        assert cursor is not None
        shifted = c.get("/v1/runs", params={"createdAfter": "2000-01-01T02:00:00+02:00",
                                            "limit": 1, "cursor": cursor})
        assert shifted.status_code == 200, shifted.text
        assert shifted.json()["items"][0]["runId"] != windowed.json()["items"][0]["runId"]


def test_bad_filters_and_labels_are_refused_with_a_code(api_server: ApiServer) -> None:
    with api_server.client(api_server.key(tenant(), "runner", "reader")) as c:
        for bad in ("team", "Team:data", ":data", "x" * 64 + ":v", "team:" + "v" * 201,
                    "db_password:hunter2", "team:AKIAIOSFODNN7EXAMPLE"):
            _refused(c.get("/v1/runs", params={"label": bad}), "LABELS_INVALID", "query/label")
        _refused(c.get("/v1/runs", params={"label": ["team:a", "team:b"]}), "LABELS_INVALID",
                 "query/label")
        for bad in ("yesterday", "2026-12-01", "2026-12-01T00:00:00", "2026-13-01T00:00:00Z",
                    "2026-12-01T00:00:60Z", "1733011200", "2026-12-01T00:00:00+25:00"):
            _refused(c.get("/v1/runs", params={"createdAfter": bad}), "REQUEST_INVALID",
                     "query/createdAfter")
            _refused(c.get("/v1/runs", params={"createdBefore": bad}), "REQUEST_INVALID",
                     "query/createdBefore")
        _refused(c.get("/v1/runs", params={"cursor": "bm90LWEtY3Vyc29y"}), "REQUEST_INVALID",
                 "query/cursor")
        plan = chain_plan(1)
        for labels in ({"db_password": "x"}, {"Team": "x"}, {"k": 1},
                       {f"k{i}": "v" for i in range(21)}, {"k": "line\nbreak"}, ["a:b"]):
            _refused(c.post("/v1/runs", json={"plan": plan, "labels": labels}),
                     "LABELS_INVALID", "body/labels")
        # Nothing was started by the refused requests.
        assert c.get("/v1/runs").json()["items"] == []
        # Fine-grained and offset timestamps are accepted.
        assert _ids(c, createdAfter="2000-01-01T00:00:00.123456789+05:30") == []


def test_labels_are_part_of_an_idempotent_request(api_server: ApiServer) -> None:
    with api_server.client(api_server.key(tenant(), "runner", "reader")) as c:
        body = {"plan": chain_plan(1), "runId": "nightly", "labels": {"a": "1", "b": "2"}}
        assert c.post("/v1/runs", json=body).status_code == 201
        same = c.post("/v1/runs", json={**body, "labels": {"b": "2", "a": "1"}})
        assert same.status_code == 200
        assert same.headers["idempotent-replayed"] == "true"
        other = c.post("/v1/runs", json={**body, "labels": {"a": "1"}})
        assert other.status_code == 422
        assert other.json()["code"] == "IDEMPOTENCY_KEY_MISMATCH"
        key = {"Idempotency-Key": str(uuid.uuid4())}
        keyed = {"plan": chain_plan(1), "labels": {"a": "1"}}
        assert c.post("/v1/runs", json=keyed, headers=key).status_code == 201
        again = c.post("/v1/runs", json={**keyed, "labels": {"a": "2"}}, headers=key)
        assert again.status_code == 422
        assert again.json()["code"] == "IDEMPOTENCY_KEY_MISMATCH"
        assert len(_ids(c)) == 2


def test_a_label_filter_never_crosses_tenants(api_server: ApiServer) -> None:
    a = api_server.key(tenant(), "runner", "reader")
    b = api_server.key(tenant(), "runner", "reader")
    with api_server.client(a) as ca, api_server.client(b) as cb:
        mine = _start(ca, "orders", {"team": "data", "only": "a"})["runId"]
        theirs = _start(cb, "orders", {"team": "data"})["runId"]
        assert _ids(cb, label="team:data") == [theirs]
        assert _ids(cb, label="only:a") == []
        assert _ids(cb, planId="orders", label="team:data") == [theirs]
        assert _ids(ca, label="team:data") == [mine]
        # A cursor of tenant A's pages shows tenant B nothing of A's.
        _start(ca, "orders", {"team": "data"})
        first = ca.get("/v1/runs", params={"label": "team:data", "limit": 1}).json()
        assert first["nextCursor"] is not None
        seen = cb.get("/v1/runs", params={"label": "team:data", "limit": 1,
                                          "cursor": first["nextCursor"]})
        assert seen.status_code == 200
        assert [r["runId"] for r in seen.json()["items"]] == [theirs]
