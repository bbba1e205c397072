"""The filtered run list on a large tenant: dvt's list_runs next to the bare SELECT it sends.

The table is seeded by ``dvt_statestore_pg.testing.seed_runs`` (the index test uses the same
rows): ``args.filtered_runs`` runs of one tenant plus a tenth as many of another that carries the
same labels. Each filter is measured twice, first as the bare psycopg query written by hand,
then through ``PostgresRunStateStore.list_runs`` (query building, binding, RunSummary models).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.store_table import Row, latency_row
from dvt_engine.models.run import RunStatus
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import SEED_EPOCH, seed_runs, store_url

EPOCH = datetime.fromisoformat(SEED_EPOCH)
PAGE = 50

#: name -> (extra WHERE of the bare query, its parameters, list_runs keyword arguments)
CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "rare label (0.1%)": (
        "labels @> %(labels)s::jsonb", {"labels": json.dumps({"batch": "b7"})},
        {"labels": {"batch": "b7"}},
    ),
    "common label (99%)": (
        "labels @> %(labels)s::jsonb", {"labels": json.dumps({"trigger": "cron"})},
        {"labels": {"trigger": "cron"}},
    ),
    "planId (2%)": ("plan_id = %(plan)s", {"plan": "plan-7"}, {"plan_id": "plan-7"}),
    "createdAfter/Before (1 hour)": (
        "created_at >= %(after)s AND created_at < %(until)s",
        {"after": EPOCH + timedelta(hours=5), "until": EPOCH + timedelta(hours=6)},
        {"created_after": EPOCH + timedelta(hours=5),
         "created_before": EPOCH + timedelta(hours=6)},
    ),
    "label + status + planId": (
        "labels @> %(labels)s::jsonb AND status = ANY(%(status)s::text[]) AND plan_id = %(plan)s",
        {"labels": json.dumps({"team": "team-10"}), "status": ["RUNNING"], "plan": "plan-10"},
        {"labels": {"team": "team-10"}, "status": [RunStatus.RUNNING], "plan_id": "plan-10"},
    ),
}


async def list_runs_filtered(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """Each filter of GET /v1/runs on a tenant of args.filtered_runs runs, 50 per page."""
    rows: list[Row] = []
    store = await PostgresRunStateStore.open(store_url(dsn, schema))
    try:
        seed_runs(dsn, schema, "big", args.filtered_runs)
        seed_runs(dsn, schema, "other", max(1, args.filtered_runs // 10))
        raw = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            for name, (where, params, kwargs) in CASES.items():
                query = sql.SQL(
                    "SELECT run_id, status, created_at, labels::text FROM {} WHERE tenant_id = "
                    "%(tenant)s AND " + where + " ORDER BY created_at DESC, run_id DESC"
                    " LIMIT %(limit)s"
                ).format(sql.Identifier(schema, "dvt_runs"))
                bound = {**params, "tenant": "big", "limit": PAGE + 1}
                samples: list[float] = []
                start = time.perf_counter()
                for _ in range(args.list):
                    t0 = time.perf_counter()
                    bare = await (await raw.execute(query, bound)).fetchall()
                    samples.append(time.perf_counter() - t0)
                rows.append(latency_row(f"filtered list, {args.filtered_runs:,} runs", name
                                        + ": bare SELECT", samples, time.perf_counter() - start,
                                        f"{len(bare)} rows"))
                samples = []
                start = time.perf_counter()
                for _ in range(args.list):
                    t0 = time.perf_counter()
                    got = await store.list_runs("big", limit=PAGE + 1, **kwargs)
                    samples.append(time.perf_counter() - t0)
                assert [r.run_id for r in got] == [r[0] for r in bare]
                rows.append(latency_row(f"filtered list, {args.filtered_runs:,} runs",
                                        name + ": dvt list_runs", samples,
                                        time.perf_counter() - start))
        finally:
            await raw.close()
    finally:
        await store.close()
    return rows
