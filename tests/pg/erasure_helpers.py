"""Two tenants with data everywhere, and what is stored of each, for the purge and retention
tests (real PostgreSQL, real Parquet files on a directory and on the S3-protocol server)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import s3fs

from contract_tests.scenarios import execute_scenario, get_scenario
from dvt_engine.access import ApiKey, ApiRole, hash_api_key, mint_api_key
from dvt_engine.admission import LimitsPatch
from dvt_engine.plugins import open_engine
from dvt_local.s3 import S3Server
from dvt_statestore_pg.access import PostgresAccessStore
from dvt_statestore_pg.admission import PostgresAdmissionStore
from dvt_statestore_pg.store import PostgresRunStateStore

RunKey = tuple[str, str]


async def seed_tenant(store: PostgresRunStateStore, tenant: str, scenario_ids: Iterable[str],
                      prefix: str) -> list[RunKey]:
    """Drive golden scenarios as ``tenant`` on the reference engine; their (tenant, run)."""
    engine = open_engine("reference", store=store)
    runs = []
    try:
        for scenario_id in scenario_ids:
            scenario = get_scenario(scenario_id)
            scenario = dataclasses.replace(scenario,
                                           context={**scenario.context, "tenantId": tenant})
            outcome = await execute_scenario(scenario, engine, store,
                                             run_id=f"{prefix}-{scenario_id}")
            assert outcome.run_ref is not None, outcome.error
            runs.append((tenant, outcome.run_id))
    finally:
        await engine.close()
    return runs


async def side_rows(store: PostgresRunStateStore, tenant: str, plan_sha: str) -> None:
    """Rows of the tenant in the service's tables: an API key, an idempotency record, a
    stored plan, limits, a budget crossing, admission rows, a webhook with a delivery."""
    access = await PostgresAccessStore.open(store.url)
    try:
        key_id, key = mint_api_key()
        await access.create_key(ApiKey(key_id, tenant, (ApiRole.ADMIN,),
                                       hash_api_key(key), datetime.now(UTC)))
        await access.claim(tenant, f"idem-{tenant}", "h" * 64, ttl=timedelta(hours=1))
        await access.remember_plan(tenant, plan_sha)
    finally:
        await access.close()
    admission = await PostgresAdmissionStore.open(store.url)
    try:
        await admission.set_limits(tenant, LimitsPatch.parse({"maxActiveRuns": 7}))
    finally:
        await admission.close()
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{store.config.schema}"')
        conn.execute("INSERT INTO dvt_webhooks (webhook_id, tenant_id, url, events, secrets)"
                     " VALUES (%s, %s, 'https://example.com/h', '{run.completed}', '{s}')",
                     (f"wh-{tenant}", tenant))
        conn.execute("INSERT INTO dvt_webhook_deliveries (delivery_id, webhook_id, tenant_id,"
                     " event_type, run_id, source, payload) VALUES (%s, %s, %s, 'run.completed',"
                     " 'r', 's', '{}')", (f"d-{tenant}", f"wh-{tenant}", tenant))
        conn.execute("INSERT INTO dvt_budget_crossings (tenant_id, month, threshold, used_units,"
                     " budget_units) VALUES (%s, '2026-01', 80, 81, 100)", (tenant,))
        conn.execute("INSERT INTO dvt_admission_buckets (tenant_id, kind, tokens, updated_at)"
                     " VALUES (%s, 'starts', 3, now())", (tenant,))
        conn.execute("INSERT INTO dvt_admission_slots (tenant_id, run_id) VALUES (%s, 'q1')",
                     (tenant,))
        conn.execute("INSERT INTO dvt_admission_queue (tenant_id, run_id, run_request_key,"
                     " plan_ref, context, state) VALUES (%s, 'q1', 'q1-req', '{}', '{}',"
                     " 'CANCELLED')", (tenant,))


def tenant_rows(store: PostgresRunStateStore) -> dict[str, dict[str, int]]:
    """Rows per tenant in every table of the schema that has a tenant_id column."""
    counts: dict[str, dict[str, int]] = {}
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = %s"
            " AND column_name = 'tenant_id'", (store.config.schema,)).fetchall()]
        for table in tables:
            for tenant, n in conn.execute(
                    f'SELECT tenant_id, count(*) FROM "{store.config.schema}"."{table}"'
                    " GROUP BY tenant_id").fetchall():
                counts.setdefault(tenant, {})[table] = int(n)
    return counts


def text_of(store: PostgresRunStateStore, query: str) -> str:
    """Every value a query returns, as one text (to look for a tenant id in it)."""
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{store.config.schema}"')
        return json.dumps([list(map(str, r)) for r in conn.execute(query).fetchall()])


def local_files(root: Path) -> list[str]:
    """Every file under a local cold root, relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def s3_files(server: S3Server, url: str) -> dict[str, bytes]:
    """Every object under an s3:// root with its bytes, by path relative to the root."""
    options = server.client_options()
    fs = s3fs.S3FileSystem(key=options["access_key_id"], secret=options["secret_access_key"],
                           endpoint_url=options["endpoint_url"], skip_instance_cache=True)
    base = url.removeprefix("s3://").rstrip("/")
    found = fs.find(base) if fs.exists(base) else []
    return {name[len(base) + 1:]: fs.cat_file(name) for name in found}


def plan_shas(store: PostgresRunStateStore, runs: Iterable[RunKey]) -> set[str]:
    """The plan sha256 each run's header names."""
    keys = list(runs)
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        rows = conn.execute(
            f'SELECT header::text FROM "{store.config.schema}".dvt_runs'
            " JOIN unnest(%s::text[], %s::text[]) AS u(t, r) ON tenant_id = u.t AND run_id = u.r",
            ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
    return {json.loads(r[0])["planRef"]["sha256"] for r in rows}


def stored_plans(store: PostgresRunStateStore) -> set[str]:
    """Every plan sha256 in the shared registry."""
    with psycopg.connect(store.config.conninfo, autocommit=True) as conn:
        return {r[0] for r in conn.execute(
            f'SELECT sha256 FROM "{store.config.schema}".dvt_plans').fetchall()}


def json_of(data: bytes) -> Any:
    """Parsed JSON bytes."""
    return json.loads(data)
