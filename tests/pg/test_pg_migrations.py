"""Migrations: ordered, recorded, idempotent, and safe when several processes run them at once."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg import sql

from contract_tests.store_helpers import (
    TenantCollector,
    fresh_copy,
    happy_path,
    make_header,
    new_id,
)
from dvt_engine.errors import IdempotencyConflict
from dvt_engine.ports import TENANT_LOG_START
from dvt_engine.projector import initial_snapshot, project
from dvt_statestore_pg import migrations as migrations_module
from dvt_statestore_pg.appends import events_document
from dvt_statestore_pg.migrations import (
    MIGRATIONS_TABLE,
    MigrationChecksumMismatch,
    available_migrations,
    migrate,
)
from dvt_statestore_pg.notify import channel_for
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import drop_schema, store_url, unique_schema_name


def _applied(dsn: str, schema: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT version FROM {} ORDER BY version").format(
                sql.Identifier(schema, MIGRATIONS_TABLE)
            )
        ).fetchall()
    return [r[0] for r in rows]


def test_files_are_ordered_and_numbered_from_one() -> None:
    versions = [m.version for m in available_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_migrate_twice_applies_once(pg_dsn: str) -> None:
    schema = unique_schema_name("dvt_mig_twice")
    try:
        first = await migrate(pg_dsn, schema)
        second = await migrate(pg_dsn, schema)
        assert first == [m.version for m in available_migrations()]
        assert second == []
        assert _applied(pg_dsn, schema) == first
    finally:
        drop_schema(pg_dsn, schema)


async def test_concurrent_migrations_apply_each_file_once(pg_dsn: str) -> None:
    schema = unique_schema_name("dvt_mig_race")
    try:
        results = await asyncio.gather(*(migrate(pg_dsn, schema) for _ in range(6)))
        expected = [m.version for m in available_migrations()]
        assert sorted(v for r in results for v in r) == expected
        assert sum(1 for r in results if r) == 1
        assert _applied(pg_dsn, schema) == expected
    finally:
        drop_schema(pg_dsn, schema)


async def test_an_edited_migration_is_refused(pg_dsn: str) -> None:
    schema = unique_schema_name("dvt_mig_edit")
    try:
        await migrate(pg_dsn, schema)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("UPDATE {} SET checksum = 'tampered' WHERE version = 1").format(
                    sql.Identifier(schema, MIGRATIONS_TABLE)
                )
            )
        with pytest.raises(MigrationChecksumMismatch):
            await migrate(pg_dsn, schema)
    finally:
        drop_schema(pg_dsn, schema)


async def test_schema_names_are_quoted_not_interpolated(pg_dsn: str) -> None:
    schema = 'dvt "odd"; DROP TABLE x; --' + unique_schema_name("")
    try:
        assert await migrate(pg_dsn, schema)
        assert _applied(pg_dsn, schema)
    finally:
        drop_schema(pg_dsn, schema)


async def test_upgrading_a_database_with_runs_keeps_them_and_scopes_them_to_tenants(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = unique_schema_name("dvt_mig_upgrade")
    everything = available_migrations()
    try:
        # A database as 0002 left it, with runs written by 0002's append function.
        monkeypatch.setattr(migrations_module, "available_migrations", lambda: everything[:2])
        assert await migrate(pg_dsn, schema) == [1, 2]
        monkeypatch.undo()
        tenant = new_id("tenant")
        headers = [make_header(tenant_id=tenant) for _ in range(2)]
        plans = {h.run_id: happy_path(h)[:3] for h in headers}
        old_append = sql.SQL(
            "SELECT count(*) FROM {}(%s, %s, %s, %s::json, 'RUNNING', NULL, NULL, true, %s)"
        ).format(sql.Identifier(schema, "dvt_append_events"))
        # The columns 0001 had: today's register statement also writes later columns.
        old_register = sql.SQL(
            "INSERT INTO {} (run_id, tenant_id, project_id, environment_id, plan_id,"
            " plan_version, engine, run_request_key, header, status, substatus, snapshot,"
            " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::json, %s, %s, %s::json, %s)"
        ).format(sql.Identifier(schema, "dvt_runs"))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for h in headers:
                conn.execute(
                    old_register,
                    (h.run_id, h.tenant_id, h.project_id, h.environment_id, h.plan_id,
                     h.plan_version, h.engine, h.run_request_key, h.model_dump_json(),
                     "PENDING", None, initial_snapshot(h).model_dump_json(), h.created_at),
                )
            for i in range(3):  # alternating, so persisted order interleaves the two runs
                for h in headers:
                    event = plans[h.run_id][i]
                    conn.execute(
                        old_append,
                        (h.run_id, tenant, i, events_document([event]), channel_for(schema)),
                    )
        store = await PostgresRunStateStore.open(store_url(pg_dsn, schema))
        try:
            assert _applied(pg_dsn, schema) == [m.version for m in everything]
            replay = TenantCollector(store.follow_tenant(tenant, after=TENANT_LOG_START))
            try:
                assert await replay.wait_for(6)
            finally:
                await replay.stop()
            assert [e.event_id for e in replay.events] == [
                plans[h.run_id][i].event_id for i in range(3) for h in headers
            ]
            first = headers[0]
            legacy = plans[first.run_id][0]
            # Stored without a content hash: the store fingerprints the stored envelope.
            assert (await store.append(fresh_copy(legacy))).duplicate
            with pytest.raises(IdempotencyConflict):
                await store.append(legacy.model_copy(update={"payload": {"engine": "x"}}))
            new = happy_path(first)[3]
            assert (await store.append(new)).run_seq == 4
            after = TenantCollector(store.follow_tenant(tenant, after=replay.items[-1].cursor))
            try:
                assert await after.wait_for(1)
            finally:
                await after.stop()
            assert [e.event_id for e in after.events] == [new.event_id]
            log = await store.fetch_events(tenant, first.run_id)
            assert [e.run_seq for e in log] == [1, 2, 3, 4]
            snapshot = await store.get_snapshot(tenant, first.run_id)
            assert snapshot is not None
            assert snapshot.model_dump_json() == project(first, log).model_dump_json()
            # The same runId in another tenant is now a run of its own.
            foreign = make_header(run_id=first.run_id)
            assert (await store.register_run(foreign))[1]
        finally:
            await store.close()
    finally:
        drop_schema(pg_dsn, schema)
