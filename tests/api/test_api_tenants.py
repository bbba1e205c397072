"""Tenant isolation: another tenant's run or plan answers exactly like one that does not exist."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from api_helpers import ApiServer, chain_plan, tenant


def _shape(answer: httpx.Response) -> tuple[Any, ...]:
    body = answer.json()
    body.pop("instance")  # the request id differs per request by design
    return (answer.status_code, answer.headers["content-type"], body)


def test_another_tenants_run_is_answered_like_a_missing_one(api_server: ApiServer) -> None:
    a, b = tenant(), tenant()
    with api_server.client(api_server.key(a, "runner", "reader")) as ca:
        run = ca.post("/v1/runs", json={"plan": chain_plan(2)})
        assert run.status_code == 201
        run_id = run.json()["runId"]
        plan_sha = ca.post("/v1/plans", json=chain_plan(2)).json()["planRef"]["sha256"]
    missing = str(uuid.uuid4())
    with api_server.client(api_server.key(b, "reader", "runner", "operator")) as cb:
        for path in ("/v1/runs/{}", "/v1/runs/{}/events", "/v1/runs/{}/stream"):
            foreign = cb.get(path.format(run_id))
            absent = cb.get(path.format(missing))
            assert _shape(foreign) == _shape(absent)
            assert foreign.status_code == 404
            assert foreign.json()["code"] == "RUN_NOT_FOUND"
        signal = {"type": "PAUSE"}
        assert _shape(cb.post(f"/v1/runs/{run_id}/signals", json=signal)) == \
            _shape(cb.post(f"/v1/runs/{missing}/signals", json=signal))
        assert _shape(cb.get(f"/v1/plans/{plan_sha}")) == _shape(cb.get(f"/v1/plans/{'f' * 64}"))
        foreign_ref = cb.post("/v1/runs", json={"planRef": {"sha256": plan_sha}})
        absent_ref = cb.post("/v1/runs", json={"planRef": {"sha256": "f" * 64}})
        assert _shape(foreign_ref) == _shape(absent_ref)
        assert foreign_ref.json()["code"] == "PLAN_NOT_FOUND"
        assert run_id not in {r["runId"] for r in cb.get("/v1/runs").json()["items"]}


def test_two_tenants_may_use_the_same_run_id_without_seeing_each_other(
        api_server: ApiServer) -> None:
    a, b = tenant(), tenant()
    body = {"plan": chain_plan(1), "runId": "daily"}
    with api_server.client(api_server.key(a, "runner", "reader")) as ca, \
            api_server.client(api_server.key(b, "runner", "reader")) as cb:
        assert ca.post("/v1/runs", json=body).status_code == 201
        answer = cb.post("/v1/runs", json={**body, "plan": chain_plan(2, plan_id="b-plan")})
        assert answer.status_code == 201, answer.text
        assert ca.get("/v1/runs/daily").json()["planId"] == "chain"
        assert cb.get("/v1/runs/daily").json()["planId"] == "b-plan"
