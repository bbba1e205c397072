"""The run-list filters on a large tenant: every filtered page is read through an index.

50 000 runs of one tenant and 10 000 of others carrying the same labels; the statements are
the ones the store sends (its Queries), explained with the values a caller would bind.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dvt_engine.models.run import RunStatus
from dvt_statestore_pg.queries import Queries
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import (
    SEED_BATCHES,
    SEED_EPOCH,
    SEED_PLANS,
    seed_runs,
)

BIG, OTHERS, RUNS = "big", ("small-a", "small-b"), 50_000
EPOCH = datetime.fromisoformat(SEED_EPOCH)


@pytest.fixture(scope="module")
def seeded(pg_dsn: str, pg_schema: str, pg_store_url: str) -> str:
    """The module's schema, migrated and holding the seeded runs."""

    async def migrate() -> None:
        await (await PostgresRunStateStore.open(pg_store_url)).close()

    asyncio.run(migrate())
    seed_runs(pg_dsn, pg_schema, BIG, RUNS)
    for other in OTHERS:
        seed_runs(pg_dsn, pg_schema, other, 5_000)
    return pg_schema


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


CASES: dict[str, dict[str, Any]] = {
    "a rare label": {"labels": {"batch": "b7"}},
    "a common label": {"labels": {"trigger": "cron"}},
    "two labels": {"labels": {"team": "team-3", "trigger": "manual"}},
    "a plan": {"plan": "plan-7"},
    "an hour": {"created_after": EPOCH + timedelta(hours=5),
                "created_before": EPOCH + timedelta(hours=6)},
    "a label and a status": {"labels": {"batch": "b20"}, "status": ["RUNNING"]},
    "a label after a cursor": {"labels": {"batch": "b7"},
                               "before": (EPOCH + timedelta(seconds=30_007), "run-00030007")},
    "plan, label and time": {"plan": "plan-7", "labels": {"team": "team-17"},
                             "created_after": EPOCH + timedelta(hours=2)},
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_filtered_list_is_read_through_an_index(pg_dsn: str, seeded: str, case: str) -> None:
    given = CASES[case]
    query = Queries(seeded).list_runs(
        status="status" in given, project=False, environment=False,
        plan="plan" in given, labels="labels" in given,
        created_after="created_after" in given, created_before="created_before" in given,
        before="before" in given,
    )
    before = given.get("before")
    params = {
        "tenant": BIG, "status": given.get("status"), "plan": given.get("plan"),
        "labels": json.dumps(given["labels"]) if "labels" in given else None,
        "created_after": given.get("created_after"),
        "created_before": given.get("created_before"),
        "before_at": before[0] if before else None, "before_id": before[1] if before else None,
        "limit": 51,
    }
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + sql.SQL(query), params).fetchone()
    assert row is not None
    nodes = list(_nodes(row[0][0]["Plan"]))
    kinds = [n["Node Type"] for n in nodes]
    assert "Seq Scan" not in kinds, json.dumps(row[0], indent=1)
    assert any("Index" in k for k in kinds), kinds


async def test_filtered_pages_find_exactly_the_runs_that_match(
        seeded: str, pg_store: PostgresRunStateStore) -> None:
    # batch b7 of plan-7: i = 7 (mod 1000) and i = 7 (mod 50), i.e. every 1000th from 7.
    expected = [f"run-{i:08d}" for i in range(RUNS - 1, -1, -1)
                if i % SEED_BATCHES == 7 and i % SEED_PLANS == 7]
    assert len(expected) == 50
    paged: list[str] = []
    before = None
    while True:
        page = await pg_store.list_runs(BIG, labels={"batch": "b7"}, plan_id="plan-7", limit=7,
                                        before=before)
        paged += [r.run_id for r in page]
        assert {r.tenant_id for r in page} <= {BIG}
        if len(page) < 7:
            break
        before = (page[-1].created_at, page[-1].run_id)
    assert paged == expected
    running = await pg_store.list_runs(BIG, labels={"batch": "b20"},
                                       status=[RunStatus.RUNNING], limit=200)
    assert [r.run_id for r in running] == [f"run-{i:08d}" for i in range(RUNS - 1, -1, -1)
                                           if i % SEED_BATCHES == 20]
    assert all(r.labels["batch"] == "b20" for r in running)
    hour = await pg_store.list_runs(BIG, created_after=EPOCH + timedelta(hours=5),
                                    created_before=EPOCH + timedelta(hours=6), limit=200)
    assert len(hour) == 200
    assert hour[0].run_id == f"run-{6 * 3600 - 1:08d}"
    for other in OTHERS:
        mine = await pg_store.list_runs(other, labels={"batch": "b7"}, limit=200)
        assert [r.run_id for r in mine] == [f"run-{i:08d}" for i in (4007, 3007, 2007, 1007, 7)]
        assert {r.tenant_id for r in mine} == {other}


def test_one_status_is_paged_in_index_order_without_a_sort(pg_dsn: str, seeded: str) -> None:
    # 5,000 RUNNING runs: with `= ANY` the planner fetched all of them and sorted; with one
    # status the (tenant, status, created_at) index gives the order and the page stops at 51.
    query = Queries(seeded).list_runs(status=True, one_status=True, project=False,
                                      environment=False)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + sql.SQL(query),
                           {"tenant": BIG, "status": "RUNNING", "limit": 51}).fetchone()
    assert row is not None
    nodes = list(_nodes(row[0][0]["Plan"]))
    kinds = [n["Node Type"] for n in nodes]
    assert "Sort" not in kinds, kinds
    assert "Seq Scan" not in kinds, kinds
    scans = [n for n in nodes if n["Node Type"] == "Index Scan"]
    assert [n["Index Name"] for n in scans] == ["dvt_runs_tenant_status_created"]
    assert scans[0]["Actual Rows"] == 51
