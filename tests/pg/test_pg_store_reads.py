"""The store's hot reads on PostgreSQL: the connection it keeps between calls, run summaries
built from their rows, several statuses read one index branch each, headers read once.

Every answer is compared with one computed independently (a plain query of every row, or the
validated model), so a faster path that answers differently fails here.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql

from contract_tests.store_helpers import happy_path, make_header, new_id
from dvt_engine.models.events import AppendResult
from dvt_engine.models.run import RunStatus, RunSummary
from dvt_engine.stores.fingerprint import event_fingerprint
from dvt_statestore_pg.fingerprints import _plain_text, fingerprint
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import store_url

STATUSES = ["PENDING", "RUNNING", "PAUSED", "COMPLETED", "FAILED", "CANCELLED"]
EPOCH = datetime(2026, 3, 1, tzinfo=UTC)


def _seed(dsn: str, schema: str, tenants: list[str], per_tenant: int) -> None:
    """Runs of each tenant with the same run ids, every status, shared creation times."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for tenant in tenants:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (run_id, tenant_id, project_id, environment_id, plan_id,"
                    " plan_version, engine, run_request_key, header, status, substatus,"
                    " snapshot, created_at, labels, last_seq)"
                    " SELECT 'run-' || lpad(i::text, 5, '0'), %(t)s, 'proj-' || (i %% 2),"
                    " 'prod', 'plan', '1', 'seed', md5(%(t)s || i) || md5(i::text), '{{}}',"
                    " (%(statuses)s::text[])[1 + i %% 6],"
                    " CASE WHEN i %% 12 = 1 THEN 'DRAINING' END, '{{}}',"
                    # Three runs share each creation time: run_id breaks the tie.
                    " %(epoch)s::timestamptz + (i / 3) * interval '1 second',"
                    " CASE WHEN i %% 5 = 0 THEN '{{}}'::jsonb"
                    "  ELSE jsonb_build_object('owner', %(t)s, 'n', i::text) END, i"
                    " FROM generate_series(0, %(n)s - 1) AS i"
                ).format(sql.Identifier(schema, "dvt_runs")),
                {"t": tenant, "statuses": STATUSES, "epoch": EPOCH, "n": per_tenant},
            )
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "dvt_runs")))


def _expected(dsn: str, schema: str, tenant: str, statuses: list[str], project: str | None
              ) -> list[tuple[str, datetime]]:
    """Every matching run of the tenant, newest first, sorted here rather than by the server."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT run_id, created_at, status, project_id FROM {} WHERE tenant_id = %s")
            .format(sql.Identifier(schema, "dvt_runs")), (tenant,)
        ).fetchall()
    kept = [(r[0], r[1]) for r in rows
            if r[2] in statuses and (project is None or r[3] == project)]
    return sorted(kept, key=lambda r: (r[1], r[0]), reverse=True)


@pytest.mark.parametrize("statuses", [["RUNNING", "PAUSED"], ["PENDING", "FAILED", "CANCELLED"],
                                      ["COMPLETED"], STATUSES])
@pytest.mark.parametrize("project", [None, "proj-1"])
async def test_pages_of_several_statuses_are_the_runs_a_full_scan_finds(
    pg_dsn: str, pg_schema: str, pg_store: PostgresRunStateStore, statuses: list[str],
    project: str | None,
) -> None:
    tenants = [new_id("tenant"), new_id("tenant")]
    _seed(pg_dsn, pg_schema, tenants, 400)
    for tenant in tenants:
        expected = _expected(pg_dsn, pg_schema, tenant, statuses, project)
        paged: list[RunSummary] = []
        before = None
        while True:
            page = await pg_store.list_runs(
                tenant, status=[RunStatus(s) for s in reversed(statuses)], project_id=project,
                limit=17, before=before)
            paged += page
            if len(page) < 17:
                break
            before = (page[-1].created_at, page[-1].run_id)
        assert [(r.run_id, r.created_at) for r in paged] == expected
        for summary in paged:
            # Built from the row without validation: the same model, the same bytes.
            again = RunSummary.model_validate_json(summary.model_dump_json())
            assert again == summary
            assert again.model_dump_json() == summary.model_dump_json()
            assert summary.tenant_id == tenant
            assert summary.labels in ({}, {"owner": tenant, "n": str(summary.last_event_seq)})
            assert summary.created_at.tzinfo is UTC
        assert {r.status.value for r in paged} <= set(statuses)


def _nodes(plan: dict[str, object]) -> list[dict[str, object]]:
    found = [plan]
    for child in plan.get("Plans", []):  # type: ignore[attr-defined]
        found += _nodes(child)
    return found


async def test_several_statuses_read_about_one_page_in_index_order(
    pg_dsn: str, pg_schema: str, pg_store: PostgresRunStateStore,
) -> None:
    tenant = new_id("tenant")
    _seed(pg_dsn, pg_schema, [tenant], 3000)
    query = pg_store._q.list_runs(status=True, project=False, environment=False, statuses=3)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + sql.SQL(query),
                           {"tenant": tenant, "status": ["FAILED", "PAUSED", "RUNNING"],
                            "limit": 20}).fetchone()
    assert row is not None
    nodes = _nodes(row[0][0]["Plan"])
    kinds = [n["Node Type"] for n in nodes]
    assert "Merge Append" in kinds, kinds
    assert "Sort" not in kinds, kinds
    scans = [n for n in nodes if n["Node Type"] == "Index Scan"]
    assert {n["Index Name"] for n in scans} == {"dvt_runs_tenant_status_created"}
    # 1,500 runs of the tenant match; the branches stop once the page is full.
    assert sum(int(n["Actual Rows"]) for n in scans) <= 3 * 20  # type: ignore[call-overload]


async def test_hostile_ids_find_nothing_after_good_ones_were_read(
    pg_store: PostgresRunStateStore,
) -> None:
    header, _ = await pg_store.register_run(make_header(tenant_id=new_id("tenant")))
    assert await pg_store.get_run(header.tenant_id, header.run_id) == header
    for bad in ("a|b", "x\x00", "", "r\x85", 7):
        assert await pg_store.get_run(header.tenant_id, bad) is None  # type: ignore[arg-type]
        assert await pg_store.get_run(bad, header.run_id) is None  # type: ignore[arg-type]
        assert await pg_store.get_snapshot(header.tenant_id, bad) is None  # type: ignore[arg-type]
        assert await pg_store.list_runs(bad) == []  # type: ignore[arg-type]


async def test_a_header_read_again_is_the_same_and_never_another_tenants(
    pg_store: PostgresRunStateStore,
) -> None:
    mine, _ = await pg_store.register_run(make_header(tenant_id=new_id("tenant")))
    theirs, _ = await pg_store.register_run(
        make_header(tenant_id=new_id("tenant"), run_id=mine.run_id))
    for _ in range(3):
        assert await pg_store.get_run(mine.tenant_id, mine.run_id) == mine
        assert await pg_store.get_run(theirs.tenant_id, mine.run_id) == theirs
        assert await pg_store.get_run(new_id("tenant"), mine.run_id) is None
    got = await pg_store.get_run(mine.tenant_id, mine.run_id)
    assert got is not None
    assert got.model_dump_json() == mine.model_dump_json()


async def test_retries_answer_what_the_first_write_answered(
    pg_store: PostgresRunStateStore,
) -> None:
    header, _ = await pg_store.register_run(make_header(tenant_id=new_id("tenant")))
    events = happy_path(header)
    first = await pg_store.append_batch(events)
    again = await pg_store.append_batch(events)
    assert [r.duplicate for r in again] == [True] * len(events)
    assert [(r.run_seq, r.event_id, r.persisted_at) for r in again] == [
        (r.run_seq, r.event_id, r.persisted_at) for r in first]
    for result in again:
        valid = AppendResult.model_validate_json(result.model_dump_json())
        assert valid == result
        assert valid.model_dump_json() == result.model_dump_json()


async def test_a_killed_held_connection_is_replaced_and_the_read_retried(
    pg_dsn: str, pg_schema: str,
) -> None:
    async with await PostgresRunStateStore.open(store_url(pg_dsn, pg_schema)) as store:
        header, _ = await store.register_run(make_header(tenant_id=new_id("tenant")))
        assert await store.get_run(header.tenant_id, header.run_id) == header
        held = store._held
        assert held is not None, "a store with pool_max >= 2 keeps a connection"
        with psycopg.connect(pg_dsn, autocommit=True) as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (held.pgconn.backend_pid,))
        assert await store.get_run(header.tenant_id, header.run_id) == header
        assert await store.get_snapshot(header.tenant_id, header.run_id) is not None
        assert store._held is not held


async def test_a_read_cancelled_mid_statement_leaves_no_busy_connection_held(
    pg_dsn: str, pg_schema: str,
) -> None:
    async with await PostgresRunStateStore.open(store_url(pg_dsn, pg_schema)) as store:
        header, _ = await store.register_run(make_header(tenant_id=new_id("tenant")))
        await store.get_run(header.tenant_id, header.run_id)
        held = store._held
        assert held is not None
        started = asyncio.Event()

        async def slow(conn: psycopg.AsyncConnection[object]) -> None:
            started.set()
            await conn.execute("SELECT pg_sleep(30)")

        task = asyncio.create_task(store._run(slow))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Either the driver cancelled the statement and the connection is idle again (then
        # it may stay held), or it was given back to the pool: never kept mid-statement.
        kept = store._held
        assert kept is None or kept.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with psycopg.connect(pg_dsn) as conn:
            row = conn.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s",
                               (held.pgconn.backend_pid,)).fetchone()
        assert row is None or row[0] != "active", row
        assert await store.get_run(header.tenant_id, header.run_id) == header


async def test_one_connection_stores_and_concurrent_reads_share_the_pool(
    pg_dsn: str, pg_schema: str,
) -> None:
    header = make_header(tenant_id=new_id("tenant"))
    async with await PostgresRunStateStore.open(
        store_url(pg_dsn, pg_schema, pool_max="1", timeout="5")
    ) as single:
        await single.register_run(header)
        reads = await asyncio.gather(
            *(single.get_run(header.tenant_id, header.run_id) for _ in range(20)))
        assert reads == [header] * 20
        assert single._held is None, "the only connection stays in the pool"
    async with await PostgresRunStateStore.open(
        store_url(pg_dsn, pg_schema, pool_max="3", timeout="5")
    ) as store:
        snapshots = await asyncio.gather(
            *(store.get_snapshot(header.tenant_id, header.run_id) for _ in range(30)),
            *(store.list_runs(header.tenant_id, status=[RunStatus.PENDING, RunStatus.RUNNING])
              for _ in range(30)),
        )
        assert all(s is not None for s in snapshots)
        assert all([r.run_id for r in page] == [header.run_id]  # type: ignore[union-attr]
                   for page in snapshots[30:])



@pytest.mark.parametrize("payload", [
    {"output": {"b": "é\u2028\x00", "a": [1, 2.5e-7, None, True, "x"]}},
    {"z": {}, "a": [], "m": {"k": {"j": 2**70}}},
    {},
])
def test_the_fingerprint_memorys_text_is_the_plain_encoders(payload: dict[str, object]) -> None:
    assert _plain_text(payload) == json.dumps(payload, sort_keys=True, ensure_ascii=False,
                                              allow_nan=False)


def _outcome(compute: object, event: object) -> object:
    try:
        return compute(event)  # type: ignore[operator]
    except Exception as exc:  # the outcome compared is the error's type
        return type(exc)


def test_payloads_the_plain_encoder_refuses_go_the_direct_way() -> None:
    base = happy_path(make_header(steps=["a"]))[2]
    circular: dict[str, object] = {}
    circular["self"] = circular
    for payload in ({"x": float("nan")}, {"x": float("inf")}, circular):
        with pytest.raises((ValueError, RecursionError)):
            _plain_text(payload)
        event = base.model_copy(update={"payload": payload})
        # Whatever the direct fingerprint answers (a value or an error), the store's does too.
        assert _outcome(fingerprint, event) == _outcome(event_fingerprint, event)
