"""Usage and budgets over HTTP against a real `dvt serve` (limits enforced) on PostgreSQL:
costHint units as a hand-computed table, the answer equal to a fold of the served events,
tenant isolation, coded refusals, and a `block` budget refusing new starts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import ApiServer, dvt, start_server, stop_server, tenant
from usage_helpers import hinted_plan, metric, run_to_the_end, window
from webhook_receiver import Receiver

from dvt_engine.cost import PriceTable, UsageWindow, meter_run, summarize
from dvt_engine.models.events import Event
from dvt_statestore_pg.admission import PostgresAdmissionStore


@pytest.fixture(scope="module")
def limited(api_store_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ApiServer]:
    """A service that enforces tenant limits and budgets (DVT_LIMITS_ENABLED)."""
    tmp = tmp_path_factory.mktemp("usage")
    server = start_server(api_store_url, tmp / "server.log", tmp / "home",
                          "--allow-webhook-host", "127.0.0.1",
                          env={"DVT_LIMITS_ENABLED": "true"})
    try:
        yield server
    finally:
        assert stop_server(server) == 0


def test_usage_equals_the_hand_computed_table_and_a_fold_of_the_log(limited: ApiServer) -> None:
    t = tenant()
    with limited.client(limited.key(t, "runner", "reader")) as c:
        for run_id in ("u1", "u2"):
            run_to_the_end(c, run_id)
        by_plan = c.get("/v1/usage", params={**window(), "groupBy": "plan"})
        assert by_plan.status_code == 200, by_plan.text
        assert by_plan.json()["totalUnits"] == 13
        assert by_plan.json()["items"] == [{"key": "hinted", "runs": 2, "computeUnits": 11,
                                            "dataUnits": 0, "totalUnits": 13}]
        by_run = c.get("/v1/usage", params={**window(), "groupBy": "run"}).json()
        assert [(i["key"], i["totalUnits"]) for i in by_run["items"]] == [("u1", 6.5),
                                                                           ("u2", 6.5)]
        # Rebuild: fold the events the service serves; the same numbers come out.
        days = UsageWindow.parse(window()["from"], window()["to"], "plan")
        rows = []
        for run_id in ("u1", "u2"):
            page = c.get(f"/v1/runs/{run_id}/events", params={"limit": 1000}).json()
            events = [Event.model_validate(e) for e in page["items"]]
            rows.extend(meter_run(events, PriceTable()))
        assert summarize(rows, days) == by_plan.json()
    # The CLI folds the same store: the same answer.
    shown = dvt(limited.env, "usage", "--tenant", t, "--store", limited.store_url,
                "--from", window()["from"], "--to", window()["to"], "--by", "plan", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == by_plan.json()
    table = dvt(limited.env, "usage", "--tenant", t, "--store", limited.store_url, "--by", "run")
    assert table.returncode == 0, table.stderr
    assert "u1" in table.stdout
    bad = dvt(limited.env, "usage", "--tenant", t, "--store", limited.store_url,
              "--from", "2026-02-30", "--json")
    assert bad.returncode != 0
    assert "USAGE_QUERY_INVALID" in bad.stdout + bad.stderr
    with limited.client(limited.key(tenant(), "reader")) as c:
        # Another tenant sees no usage of t's runs: its own, empty.
        other = c.get("/v1/usage", params=window())
        assert other.status_code == 200
        assert other.json()["items"] == []
        assert other.json()["totalUnits"] == 0
    with limited.client(limited.key(t, "runner")) as c:
        assert c.get("/v1/usage").status_code == 403
        assert metric(c, "dvt_usage_queries_total", group_by="plan") >= 1


@pytest.mark.parametrize("params", [{"from": "2026-13-01"}, {"to": "tomorrow"},
                                    {"from": "2026-11-02", "to": "2026-11-01"},
                                    {"from": "2020-01-01", "to": "2026-01-01"},
                                    {"groupBy": "tenant"}])
def test_bad_usage_queries_are_refused_with_a_coded_problem(limited: ApiServer,
                                                            params: dict[str, str]) -> None:
    with limited.client(limited.key("usage-bad", "reader")) as c:
        answer = c.get("/v1/usage", params=params)
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["code"] == "USAGE_QUERY_INVALID"


@pytest.mark.parametrize("body", [{"monthlyBudgetUnits": -5}, {"monthlyBudgetUnits": 10**15},
                                  {"monthlyBudgetUnits": "100"}, {"monthlyBudgetUnits": True},
                                  {"budgetPolicy": "stop"}])
def test_bad_budgets_are_refused(limited: ApiServer, body: dict[str, Any]) -> None:
    with limited.client(limited.admin("budget-bad")) as c:
        before = c.get("/v1/limits").json()
        answer = c.put("/v1/limits", json=body)
        assert answer.status_code == 422
        assert answer.json()["code"] == "LIMITS_INVALID"
        assert c.get("/v1/limits").json() == before


def _crossings(store_url: str, tenant_id: str) -> list[tuple[int, str]]:
    """The tenant's recorded budget crossings (threshold, used units), read from PostgreSQL."""
    async def read() -> list[tuple[int, str]]:
        admission = await PostgresAdmissionStore.open(store_url)
        try:
            return [(c.threshold, str(c.used_units)) for c in await admission.crossings(tenant_id)]
        finally:
            await admission.close()
    return asyncio.run(read())


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1."""
    found = Receiver()
    try:
        yield found
    finally:
        found.close()


def test_a_block_budget_refuses_new_starts_and_crossings_are_announced_once(
        limited: ApiServer, receiver: Receiver) -> None:
    t = tenant()
    with limited.client(limited.admin(t)) as c:
        assert c.put("/v1/limits", json={"monthlyBudgetUnits": 13, "budgetPolicy": "block"}
                     ).status_code == 200
        hook = c.post("/v1/webhooks", json={"url": receiver.url(f"/budget/{t}"),
                                            "events": ["budget.threshold"]})
        assert hook.status_code == 201, hook.text
        before = {p: metric(c, "dvt_budget_crossings_total", threshold=p) for p in ("80", "100")}
    with limited.client(limited.key(t, "runner", "reader")) as c:
        run_to_the_end(c, "b1")  # 6.5 of 13: under the budget
        run_to_the_end(c, "b2")  # started at 6.5 (50 %); ends at 13 of 13: spent
        for attempt in ("b3", "b4"):
            refused = c.post("/v1/runs", json={"plan": hinted_plan(), "runId": attempt})
            assert refused.status_code == 422, refused.text
            assert refused.json()["code"] == "QUOTA_EXCEEDED"
            assert "13 of its 13 monthly budget units" in refused.json()["detail"]
            assert c.get(f"/v1/runs/{attempt}").status_code == 404
        assert metric(c, "dvt_limit_rejections_total", tenant=t, kind="budget") == 2
    # b2's steps crossed 80 % and 100 % (noticed as they ended, or at the latest by the first
    # refused start); each crossing is recorded and announced once.
    crossings = _crossings(limited.store_url, t)
    assert [threshold for threshold, _ in crossings] == [80, 100]
    assert 10.4 <= float(crossings[0][1]) <= 13
    assert crossings[1][1] == "13.000000"
    got = receiver.wait_for(lambda r: len([x for x in r if x.path == f"/budget/{t}"]) >= 2)
    bodies = sorted((json.loads(x.body) for x in got if x.path == f"/budget/{t}"),
                    key=lambda b: b["data"]["threshold"])
    assert [b["type"] for b in bodies] == ["budget.threshold"] * 2
    assert [b["data"]["threshold"] for b in bodies] == [80, 100]
    assert bodies[1]["data"]["budgetUnits"] == 13
    with limited.client(limited.admin(t)) as c:
        deliveries = c.get(f"/v1/webhooks/{hook.json()['webhookId']}/deliveries").json()
        assert len(deliveries["items"]) == 2
        for p in ("80", "100"):
            assert metric(c, "dvt_budget_crossings_total", threshold=p) == before[p] + 1
    warned = dvt(limited.env, "limits", "set", "--tenant", t, "--store", limited.store_url,
                 "--budget-policy", "warn", "--json")
    assert warned.returncode == 0, warned.stderr
    assert json.loads(warned.stdout)["budgetPolicy"] == "warn"
    assert json.loads(warned.stdout)["monthlyBudgetUnits"] == 13
    with limited.client(limited.key(t, "runner", "reader")) as c:
        assert c.post("/v1/runs", json={"plan": hinted_plan(), "runId": "b3"}
                      ).status_code == 201
    assert len(_crossings(limited.store_url, t)) == 2
