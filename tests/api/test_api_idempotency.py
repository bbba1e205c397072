"""Idempotent run creation: replay, mismatch, and one run for N concurrent identical requests."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
from api_helpers import ApiServer, chain_plan, tenant


def test_a_repeated_key_replays_the_first_answer_and_another_body_is_refused(
        api_server: ApiServer) -> None:
    t = tenant()
    with api_server.client(api_server.key(t, "runner", "reader")) as c:
        key = {"Idempotency-Key": str(uuid.uuid4())}
        body = {"plan": chain_plan(2), "inputs": {"day": "2026-12-01"}}
        first = c.post("/v1/runs", json=body, headers=key)
        assert first.status_code == 201
        assert "idempotent-replayed" not in first.headers
        again = c.post("/v1/runs", json=body, headers=key)
        assert again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"] == first.headers["location"]
        assert again.json() == first.json()
        other = c.post("/v1/runs", json={**body, "inputs": {"day": "2026-12-02"}}, headers=key)
        assert other.status_code == 422
        assert other.json()["code"] == "IDEMPOTENCY_KEY_MISMATCH"
        assert len(c.get("/v1/runs").json()["items"]) == 1


def test_a_run_id_in_the_body_is_idempotent_too(api_server: ApiServer) -> None:
    t = tenant()
    with api_server.client(api_server.key(t, "runner", "reader")) as c:
        body = {"plan": chain_plan(2), "runId": "nightly-2026-12-01"}
        assert c.post("/v1/runs", json=body).status_code == 201
        again = c.post("/v1/runs", json=body)
        assert again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true"
        other = c.post("/v1/runs", json={**body, "plan": chain_plan(3, plan_id="other")})
        assert other.status_code == 422
        assert other.json()["code"] == "IDEMPOTENCY_KEY_MISMATCH"
        other = c.post("/v1/runs", json={**body, "inputs": {"day": "2026-12-02"}})
        assert other.status_code == 422
        assert other.json()["code"] == "IDEMPOTENCY_KEY_MISMATCH"
        assert [r["runId"] for r in c.get("/v1/runs").json()["items"]] == [body["runId"]]


async def test_twenty_concurrent_identical_requests_create_one_run(
        api_server: ApiServer) -> None:
    t = tenant()
    key = api_server.key(t, "runner", "reader")
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())}
    body = {"plan": chain_plan(4)}
    async with httpx.AsyncClient(base_url=api_server.base_url, timeout=60,
                                 limits=httpx.Limits(max_connections=20)) as c:
        answers = await asyncio.gather(*(c.post("/v1/runs", json=body, headers=headers)
                                         for _ in range(20)))
        statuses = Counter(a.status_code for a in answers)
        assert statuses[201] == 1, statuses
        assert set(statuses) <= {201, 200, 409}
        conflicts = [a.json()["code"] for a in answers if a.status_code == 409]
        assert set(conflicts) <= {"IDEMPOTENCY_KEY_IN_USE"}
        run_ids = {a.json()["runId"] for a in answers if a.status_code in (200, 201)}
        assert len(run_ids) == 1
        listed = (await c.get("/v1/runs", headers=headers)).json()["items"]
        assert [r["runId"] for r in listed] == list(run_ids)
        # Once the first request finished, every repeat is a replay of it.
        late = await c.post("/v1/runs", json=body, headers=headers)
        assert late.status_code == 200
        assert late.json()["runId"] in run_ids
