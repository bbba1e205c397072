"""Hot queries at scale: a run's status by id, a tenant's runs newest first with a status
filter, and a page of a run's events, on a store of ``--scale-runs`` runs (default 1,000,000)
with ``--scale-events`` events per run (default 10: 10,000,000 events).

The store is seeded in the database itself: one template run is written through dvt (register
and append, so its rows are exactly what dvt stores), then ``INSERT ... SELECT`` over
``generate_series`` copies it under generated run ids, tenants, creation times and statuses.
The copies' header, snapshot and envelopes are the template's with the ids replaced, so dvt
reads them back as valid runs; the snapshot of every copy is the template's (RUNNING), only the
status column varies (90 % COMPLETED, 5 % RUNNING, 4 % FAILED, 1 % PENDING) so the status
filter is selective. The events->runs foreign key is not checked while seeding
(``session_replication_role = replica``): every copied event names a copied run by
construction. Then ``VACUUM ANALYZE``.

Every query dvt sends for these reads is printed with its plan (``EXPLAIN (ANALYZE,
BUFFERS)``); a plan with a sequential scan marks the row FAILED and the benchmark's exit
status non-zero (``SEQ_SCAN_FAILURES``).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.store_table import Row, latency_row
from contract_tests.store_suite import happy_path, make_header
from dvt_engine.models.run import RunStatus
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import store_url

TEMPLATE_TENANT = "tenantTMPLx"
TEMPLATE_RUN = "runTMPLxxxxxxxxx"
RUNS_PER_TENANT = 10_000
CHUNK_RUNS = 50_000
PAGE = 50

SCALE_PLANS: list[str] = []
SEQ_SCAN_FAILURES: list[str] = []

# Run number g -> its ids, creation time and status; every statement below uses the same rules.
_RUN_ID = "'r' || lpad(g::text, 15, '0')"
_TENANT = "'t' || lpad((g %% {tenants})::text, 10, '0')"
_STATUS = (
    "CASE WHEN (g / {tenants}) %% 100 < 90 THEN 'COMPLETED'"
    " WHEN (g / {tenants}) %% 100 < 95 THEN 'RUNNING'"
    " WHEN (g / {tenants}) %% 100 < 99 THEN 'FAILED' ELSE 'PENDING' END"
)


def run_id(g: int) -> str:
    """The id of generated run number ``g`` (as ``_RUN_ID`` makes it)."""
    return "r" + str(g).zfill(15)


def tenants_of(runs: int) -> int:
    """How many tenants ``runs`` generated runs are spread over (about 10,000 runs each)."""
    return max(1, runs // RUNS_PER_TENANT)


def tenant_id(g: int, tenants: int) -> str:
    """The tenant of generated run number ``g`` (as ``_TENANT`` makes it)."""
    return "t" + str(g % tenants).zfill(10)


def _swap(column: str, tenants: int) -> str:
    return (
        f"replace(replace({column}, '{TEMPLATE_RUN}', {_RUN_ID}),"
        f" '{TEMPLATE_TENANT}', {_TENANT.format(tenants=tenants)})"
    )


def _seed_runs_sql(schema: str, tenants: int) -> sql.Composed:
    tenant = _TENANT.format(tenants=tenants)
    text = (
        "INSERT INTO {runs} (run_id, tenant_id, project_id, environment_id, plan_id,"
        " plan_version, engine, run_request_key, header, status, substatus, last_seq, snapshot,"
        " snapshot_seq, created_at, updated_at, labels)"
        f" SELECT {_RUN_ID}, {tenant}, t.project_id, t.environment_id, t.plan_id,"
        f" t.plan_version, t.engine, {_RUN_ID}, {_swap('t.header::text', tenants)}::json,"
        f" {_STATUS.format(tenants=tenants)}, NULL, t.last_seq,"
        f" {_swap('t.snapshot::text', tenants)}::json, t.snapshot_seq,"
        " timestamptz '2026-01-01' + g * interval '1 second',"
        " timestamptz '2026-01-01' + g * interval '1 second' + interval '1 minute', t.labels"
        " FROM {runs} t, generate_series(%s::bigint, %s::bigint) g"
        " WHERE t.run_id = %s AND t.tenant_id = %s"
    )
    return sql.SQL(text).format(runs=sql.Identifier(schema, "dvt_runs"))


def _seed_events_sql(schema: str, tenants: int) -> sql.Composed:
    tenant = _TENANT.format(tenants=tenants)
    text = (
        "INSERT INTO {events} (run_id, run_seq, idempotency_key, event_id, event_type,"
        " tenant_id, project_id, environment_id, step_id, logical_attempt_id,"
        " engine_attempt_id, emitted_at, persisted_at, envelope, content_hash)"
        f" SELECT {_RUN_ID}, e.run_seq, {_swap('e.idempotency_key', tenants)},"
        " md5(g::text || '/' || e.run_seq::text)::uuid::text, e.event_type,"
        f" {tenant}, e.project_id, e.environment_id, e.step_id, e.logical_attempt_id,"
        " e.engine_attempt_id, e.emitted_at, e.persisted_at,"
        f" {_swap('e.envelope::text', tenants)}::json, e.content_hash"
        " FROM generate_series(%s::bigint, %s::bigint) g, {events} e"
        " WHERE e.run_id = %s AND e.tenant_id = %s ORDER BY g, e.run_seq"
    )
    return sql.SQL(text).format(events=sql.Identifier(schema, "dvt_events"))


async def seed(dsn: str, schema: str, runs: int, events_per_run: int) -> float:
    """Write the template run through dvt, copy it ``runs`` times; seconds taken."""
    began = time.perf_counter()
    tenants = tenants_of(runs)
    async with await PostgresRunStateStore.open(store_url(dsn, schema)) as store:
        steps = max(1, (events_per_run - 1) // 2)
        header = make_header(tenant_id=TEMPLATE_TENANT, run_id=TEMPLATE_RUN,
                             steps=[f"s{i}" for i in range(steps)])
        await store.register_run(header)
        await store.append_batch(happy_path(header)[:events_per_run])
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SET session_replication_role = replica")
        template = (TEMPLATE_RUN, TEMPLATE_TENANT)
        for lo in range(1, runs + 1, CHUNK_RUNS):
            hi = min(runs, lo + CHUNK_RUNS - 1)
            await conn.execute(_seed_runs_sql(schema, tenants), (lo, hi, *template))
            await conn.execute(_seed_events_sql(schema, tenants), (lo, hi, *template))
            print(f"    seeded {hi:,} runs, {time.perf_counter() - began:.0f} s", flush=True)
        for table in ("dvt_runs", "dvt_events"):
            await conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, table)))
    return time.perf_counter() - began


async def explain(conn: psycopg.AsyncConnection[Any], title: str, query: str,
                  params: Any) -> bool:
    """Print the plan of one statement as dvt sends it; False if it scans a table whole."""
    async with psycopg.AsyncClientCursor(conn) as cur:
        await cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, params)
        plan = "\n".join(str(row[0]) for row in await cur.fetchall())
    SCALE_PLANS.append(f"-- {title}\n{plan}")
    if "Seq Scan" in plan:
        SEQ_SCAN_FAILURES.append(title)
        return False
    return True


async def _time(n: int, call: Callable[[int], Awaitable[object]]) -> tuple[list[float], float]:
    samples = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - t0)
    return samples, time.perf_counter() - start


async def hot_queries_at_scale(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """Seed the store, print the plans of the hot reads, then time each next to bare SQL."""
    runs, per_run = args.scale_runs, args.scale_events
    tenants = tenants_of(runs)
    seconds = await seed(dsn, schema, runs, per_run)
    scale = f"{runs:,} runs, {runs * per_run:,} events, {tenants} tenants"
    rows = [Row("hot queries at scale", "seed (INSERT ... SELECT generate_series)",
                runs * per_run, seconds, note=f"{scale}; events/s written")]
    pick = random.Random(7)
    ids = [pick.randrange(1, runs + 1) for _ in range(args.list)]
    raw = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with await PostgresRunStateStore.open(store_url(dsn, schema)) as store, raw:
        q = store._q  # the statements dvt sends, for EXPLAIN and the bare rows
        hot_tenant = tenant_id(ids[0], tenants)
        status_query = q.list_runs(status=True, one_status=True, project=False,
                                   environment=False)
        status_params = {"tenant": hot_tenant, "status": "RUNNING", "limit": PAGE}
        statuses_query = q.list_runs(status=True, project=False, environment=False,
                                     statuses=2)
        g = ids[0]
        ok = {
            "status by id": await explain(raw, "status by id (load_state)", q.load_state,
                                          {"run": run_id(g), "tenant": tenant_id(g, tenants),
                                           "known": -1})
            & await explain(raw, "status by id (header)", q.header,
                            (run_id(g), tenant_id(g, tenants))),
            "runs by status": await explain(raw, "tenant's RUNNING runs, newest first",
                                            status_query, status_params),
            # Several statuses: one ordered branch of the index per status, merged.
            "runs by statuses": await explain(
                raw, "tenant's PENDING or RUNNING runs, newest first", statuses_query,
                {**status_params, "status": ["PENDING", "RUNNING"]}),
            "events page": await explain(raw, "a page of a run's events", q.fetch,
                                         (run_id(g), tenant_id(g, tenants), 0, PAGE)),
        }

        def verdict(name: str) -> str:
            return f"{scale}; index scans" if ok[name] else f"{scale}; FAILED: seq scan"

        bare_status = sql.SQL(
            "SELECT status, last_seq FROM {} WHERE run_id = %s AND tenant_id = %s"
        ).format(sql.Identifier(schema, "dvt_runs"))

        def run_of(i: int) -> tuple[str, str]:
            return run_id(ids[i]), tenant_id(ids[i], tenants)

        async def bare_by_id(i: int) -> None:
            await (await raw.execute(bare_status, run_of(i))).fetchone()

        async def dvt_by_id(i: int) -> None:
            run, tenant = run_of(i)
            assert await store.get_snapshot(tenant, run) is not None

        async def bare_list(i: int) -> None:
            params = {**status_params, "tenant": tenant_id(ids[i], tenants)}
            await (await raw.execute(status_query, params)).fetchall()

        async def dvt_list(i: int) -> None:
            found = await store.list_runs(run_of(i)[1], status=[RunStatus.RUNNING], limit=PAGE)
            assert len(found) == PAGE

        async def bare_page(i: int) -> None:
            await (await raw.execute(q.fetch, (*run_of(i), 0, PAGE))).fetchall()

        async def dvt_page(i: int) -> None:
            run, tenant = run_of(i)
            found = await store.fetch_events(tenant, run, limit=PAGE)
            assert len(found) == min(PAGE, per_run)

        for scenario, name, pairs in (
            ("hot: status by id", "status by id",
             (("bare SELECT by primary key", bare_by_id), ("dvt get_snapshot", dvt_by_id))),
            ("hot: tenant's RUNNING runs, newest first", "runs by status",
             (("bare SELECT (dvt's SQL)", bare_list), ("dvt list_runs", dvt_list))),
            ("hot: a page of a run's events", "events page",
             (("bare SELECT (dvt's SQL)", bare_page), ("dvt fetch_events", dvt_page))),
        ):
            for subject, call in pairs:
                samples, took = await _time(args.list, call)
                rows.append(latency_row(scenario, subject, samples, took, verdict(name)))
    return rows
