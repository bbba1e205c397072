"""The dvt store scenarios (appends, concurrency, duplicate storms, projection lag, rebuilds, run
listing), each with the bare-psycopg figure for the same work where one exists.

A little over 500 lines: each scenario sits next to its bare twin so the two do the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.store_baseline import (
    BASELINE_DDL,
    RAW_INSERT,
    RAW_INSERT_NEXT_SEQ,
    RAW_RUNS_DDL,
    bare_read_and_fold,
    envelope,
)
from benchmarks.store_engine import reference_noop_steps
from benchmarks.store_filters import list_runs_filtered
from benchmarks.store_lookup import status_by_id
from benchmarks.store_scale import hot_queries_at_scale
from benchmarks.store_table import Row, Scenario, latency_row
from contract_tests.store_suite import happy_path, make_header
from dvt_engine.eventlog import EventFactory
from dvt_engine.idempotency import signal_key
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunHeader, RunStatus
from dvt_engine.projector import initial_snapshot
from dvt_statestore_pg import admin
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.testing import store_url

PLANS: list[str] = []


def dvt_scenarios() -> list[Scenario]:
    return [
        dvt_single_and_batch,
        concurrent_appends,
        duplicate_storm,
        projection_lag,
        rebuild_100k,
        list_runs_100k,
        list_runs_filtered,
        status_by_id,
        reference_noop_steps,
        hot_queries_at_scale,
    ]


# --- dvt scenarios ------------------------------------------------------------------------


def _header(tenant: str, steps: int, created_at: datetime | None = None) -> RunHeader:
    return make_header(
        tenant_id=tenant, steps=[f"s{i}" for i in range(steps)], created_at=created_at
    )


def _step_events(header: RunHeader, count: int) -> list[Event]:
    """``count`` events of a running run: RunStarted then StepStarted/StepCompleted pairs."""
    events = happy_path(header)[:-1]
    return events[:count]


async def _open(dsn: str, schema: str, **options: str) -> PostgresRunStateStore:
    return await PostgresRunStateStore.open(store_url(dsn, schema, **options))


async def _raw_conn(dsn: str, schema: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return conn


async def dvt_single_and_batch(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """store.append one at a time, and append_batch of 100 events of one run per call."""
    rows: list[Row] = []
    async with await _open(dsn, schema) as store:
        # Runs of a 20-step plan (41 events each), as an engine writes them.
        events: list[Event] = []
        while len(events) < args.single:
            header, _ = await store.register_run(_header("bench", steps=20))
            await store.get_snapshot(header.tenant_id, header.run_id)  # a warm writer
            events += _step_events(header, 41)
        events = events[: args.single]
        samples = []
        start = time.perf_counter()
        for event in events:
            t0 = time.perf_counter()
            await store.append(event)
            samples.append(time.perf_counter() - t0)
        rows.append(
            latency_row(
                "single append",
                "dvt store.append",
                samples,
                time.perf_counter() - start,
                "incl. validation + projection",
            )
        )
        samples = []
        batches = []
        for _ in range(args.batches):
            h, _ = await store.register_run(_header("bench", steps=50))
            batches.append(_step_events(h, 100))
        for batch in batches:
            t0 = time.perf_counter()
            await store.append_batch(batch)
            samples.append(time.perf_counter() - t0)
        row = latency_row(
            "batch append (100/tx)", "dvt append_batch", samples, sum(samples), "p50/p99 per batch"
        )
        row.count = sum(len(b) for b in batches)
        rows.append(row)
    return rows


def decision_event(factory: EventFactory, signal_id: str) -> Event:
    """A signal decision record: many writers append these to one run at once."""
    h = factory.header
    return factory.signal_event(
        "SignalRejected",
        signal_key(h.tenant_id, h.run_id, signal_id),
        {
            "signalId": signal_id,
            "signalType": "PAUSE",
            "errorCode": "SIGNAL_UNAUTHORIZED",
            "actor": {"id": "bench", "roles": ["operator"]},
        },
    )


async def concurrent_appends(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """16 writers (two stores, as two processes would be) to one run, then to 16 runs.

    The events are signal decision records on runs of a 10-step plan, so the numbers measure
    the append path under contention, not the projection of a huge plan.
    """
    writers = 16
    per_writer = args.concurrent // writers
    rows: list[Row] = []
    conn = await _raw_conn(dsn, schema)
    await conn.execute(BASELINE_DDL)
    await conn.execute(RAW_RUNS_DDL)
    for label, runs in (("one run", 1), ("many runs", writers)):
        # Baseline: the same inserts, concurrent, each on its own connection, each allocating
        # the run's next runSeq in SQL (a counter row updated in the same statement), so the
        # database serialises the writers of a run as it must for a gap-free sequence.
        conns = [await _raw_conn(dsn, schema) for _ in range(writers)]
        run_ids = [str(uuid.uuid4()) for _ in range(runs)]
        await conn.execute("INSERT INTO raw_runs SELECT unnest(%s::text[]), 0", (run_ids,))
        samples: list[float] = []

        async def raw_writer(i: int, c: psycopg.AsyncConnection[Any]) -> None:
            run_id = run_ids[i % runs]  # noqa: B023 - awaited in this iteration
            for _ in range(per_writer):
                key = uuid.uuid4().hex * 2
                t0 = time.perf_counter()
                await c.execute(
                    RAW_INSERT_NEXT_SEQ, (run_id, key, str(uuid.uuid4()), envelope(run_id, 0, key))
                )
                samples.append(time.perf_counter() - t0)  # noqa: B023

        start = time.perf_counter()
        await asyncio.gather(*(raw_writer(i, c) for i, c in enumerate(conns)))
        rows.append(
            latency_row(
                f"concurrent appends, {label}",
                "bare INSERT, runSeq from SQL",
                samples,
                time.perf_counter() - start,
                f"{writers} writers",
            )
        )
        for c in conns:
            await c.close()
        async with await _open(dsn, schema) as one, await _open(dsn, schema) as two:
            headers = [(await one.register_run(_header("bench", steps=10)))[0] for _ in range(runs)]
            f = [EventFactory(h, emitted_by="step-runner") for h in headers]
            plan = [
                [decision_event(f[i % runs], f"sig-{i}-{n}") for n in range(per_writer)]
                for i in range(writers)
            ]
            for h in headers:
                await one.append(
                    EventFactory(h, emitted_by="engine").run_event(
                        "RunStarted", {"engine": "bench"}
                    )
                )
            samples = []

            async def dvt_writer(i: int) -> None:
                store = one if i % 2 else two
                for event in plan[i]:  # noqa: B023 - awaited in this iteration
                    t0 = time.perf_counter()
                    await store.append(event)
                    samples.append(time.perf_counter() - t0)  # noqa: B023

            start = time.perf_counter()
            await asyncio.gather(*(dvt_writer(i) for i in range(writers)))
            rows.append(
                latency_row(
                    f"concurrent appends, {label}",
                    "dvt store.append",
                    samples,
                    time.perf_counter() - start,
                    f"{writers} writers",
                )
            )
            for h in headers:
                log = await one.fetch_events(h.tenant_id, h.run_id)
                assert len(log) == 1 + per_writer * writers // runs, "lost an event"
    await conn.close()
    return rows


async def duplicate_storm(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """args.storm duplicate appends across 1,000 runs; nothing may change."""
    runs, per_run = 1000, 10
    rows: list[Row] = []
    async with await _open(dsn, schema) as store, await _open(dsn, schema) as other:
        headers = [(await store.register_run(_header("storm", steps=8)))[0] for _ in range(runs)]
        events = [e for h in headers for e in _step_events(h, per_run)]
        for i in range(0, len(events), 1000):
            await store.append_batch(events[i : i + 1000])
        check = sql.SQL(
            "SELECT (SELECT count(*) FROM {e}), md5(string_agg(snapshot::text || last_seq, ''"
            " ORDER BY run_id)) FROM {r}"
        ).format(e=sql.Identifier(schema, "dvt_events"), r=sql.Identifier(schema, "dvt_runs"))
        raw = await _raw_conn(dsn, schema)
        before = await (await raw.execute(check)).fetchone()
        rounds = max(1, args.storm // len(events))
        batches = [events[i : i + 1000] for i in range(0, len(events), 1000)]
        done = 0
        samples: list[float] = []

        async def writer(w: int) -> None:
            nonlocal done
            store_w = store if w % 2 else other
            for r in range(rounds):
                for b, batch in enumerate(batches):
                    if (r * len(batches) + b) % 2 != w:
                        continue
                    t0 = time.perf_counter()
                    results = await store_w.append_batch(batch)
                    samples.append(time.perf_counter() - t0)
                    assert all(x.duplicate for x in results)
                    done += len(batch)

        start = time.perf_counter()
        await asyncio.gather(writer(0), writer(1))
        elapsed = time.perf_counter() - start
        after = await (await raw.execute(check)).fetchone()
        assert after == before, "the duplicate storm changed the store"
        row = latency_row(
            "duplicate storm",
            "dvt append_batch",
            samples,
            elapsed,
            f"{runs} runs, 1000/batch, 2 writers; no row, no snapshot changed",
        )
        row.count = done
        rows.append(row)
        # Baseline: the same keys through INSERT ... ON CONFLICT DO NOTHING, 1,000 per statement.
        await raw.execute(BASELINE_DDL)
        keyed = [(e.run_id, e.idempotency_key) for e in events]
        await raw.execute(
            "INSERT INTO raw_events (run_id, run_seq, idempotency_key, event_id, event_type,"
            " tenant_id, emitted_at, envelope) SELECT r, row_number() OVER (), k, 'x', 't', 't',"
            " now(), '{}' FROM unnest(%s::text[], %s::text[]) AS u(r, k)",
            ([k[0] for k in keyed], [k[1] for k in keyed]),
        )
        samples = []
        start = time.perf_counter()
        for _ in range(rounds):
            for i in range(0, len(keyed), 1000):
                chunk = keyed[i : i + 1000]
                t0 = time.perf_counter()
                await raw.execute(
                    "INSERT INTO raw_events (run_id, run_seq, idempotency_key, event_id,"
                    " event_type, tenant_id, emitted_at, envelope)"
                    " SELECT r, 0, k, 'x', 't', 't', now(), '{}'"
                    " FROM unnest(%s::text[], %s::text[]) AS u(r, k)"
                    " ON CONFLICT (run_id, idempotency_key) DO NOTHING",
                    ([c[0] for c in chunk], [c[1] for c in chunk]),
                )
                samples.append(time.perf_counter() - t0)
        row = latency_row(
            "duplicate storm",
            "bare INSERT ON CONFLICT",
            samples,
            time.perf_counter() - start,
            "1000/statement, 1 connection",
        )
        row.count = rounds * len(keyed)
        rows.insert(0, row)
        await raw.close()
    return rows


async def projection_lag(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """Append on one store; another store's follower sees the event and its snapshot."""
    n = args.lag
    rows: list[Row] = []
    # Baseline: INSERT + NOTIFY on one connection, LISTEN on another.
    writer, listener = await _raw_conn(dsn, schema), await _raw_conn(dsn, schema)
    await writer.execute(BASELINE_DDL)
    await listener.execute("LISTEN bench_lag")
    samples: list[float] = []
    run_id = str(uuid.uuid4())
    notes = listener.notifies()
    for seq in range(1, n + 1):
        key = uuid.uuid4().hex * 2
        t0 = time.perf_counter()
        async with writer.transaction():
            await writer.execute(
                RAW_INSERT, (run_id, seq, key, str(uuid.uuid4()), envelope(run_id, seq, key))
            )
            await writer.execute("SELECT pg_notify('bench_lag', %s)", (str(seq),))
        note = await anext(notes)
        assert note.payload == str(seq)
        samples.append(time.perf_counter() - t0)
    rows.append(
        latency_row(
            "projection lag",
            "bare INSERT+NOTIFY -> LISTEN",
            samples,
            sum(samples),
            "append to notification received",
        )
    )
    await writer.close()
    await listener.close()
    async with await _open(dsn, schema) as producer, await _open(dsn, schema) as reader:
        # A 10-step run receiving decision records: the lag of the store, not of a huge plan.
        header, _ = await producer.register_run(_header("lag", steps=10))
        factory = EventFactory(header, emitted_by="operator")
        events = [decision_event(factory, f"lag-{i}") for i in range(n)]
        seen: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

        async def watch() -> None:
            async for event in reader.follow(header.tenant_id, header.run_id):
                snap = await reader.get_snapshot(header.tenant_id, header.run_id)
                assert snap is not None
                assert snap.last_event_seq >= (event.run_seq or 0)
                seen.put_nowait((event.run_seq or 0, time.perf_counter()))

        task = asyncio.create_task(watch())
        samples = []
        for event in events:
            t0 = time.perf_counter()
            result = await producer.append(event)
            seq, t1 = await asyncio.wait_for(seen.get(), 30)
            assert seq == result.run_seq
            samples.append(t1 - t0)
        task.cancel()
        rows.append(
            latency_row(
                "projection lag",
                "dvt append -> follow -> get_snapshot",
                samples,
                sum(samples),
                "another store instance reads",
            )
        )
    return rows


async def rebuild_100k(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """Rebuild every snapshot from args.rebuild events (10 per run)."""
    rows: list[Row] = []
    async with await _open(dsn, schema) as store:
        headers = [
            (await store.register_run(_header("rebuild", steps=8)))[0]
            for _ in range(args.rebuild // 10)
        ]
        events = [e for h in headers for e in _step_events(h, 10)]
        for i in range(0, len(events), 1000):
            await store.append_batch(events[i : i + 1000])
    raw = await _raw_conn(dsn, schema)
    count, took = await bare_read_and_fold(raw, schema)
    rows.append(
        Row(
            "rebuild all snapshots",
            "bare read + json.loads + fold + write back",
            count,
            took,
            note="dict per run, 500 runs per UPDATE",
        )
    )
    await raw.close()
    report = await admin.rebuild(store_url(dsn, schema))
    assert not report.differed
    assert report.events == len(events)
    rows.append(
        Row(
            "rebuild all snapshots",
            "dvt store rebuild",
            report.events,
            report.seconds,
            note=f"{report.runs} runs, byte-identical: {not report.differed}",
        )
    )
    return rows


async def seed_runs(dsn: str, schema: str, runs: int) -> None:
    """``runs`` runs of 20 tenants (t00..t19), one a second; every tenth of a tenant RUNNING."""
    template = _header("t00", steps=3)
    snapshot = initial_snapshot(template).model_dump_json()
    header = template.model_dump_json()
    statuses = ["COMPLETED"] * 8 + ["RUNNING", "FAILED"]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    raw = await _raw_conn(dsn, schema)
    async with (
        raw.cursor() as cur,
        cur.copy(
            sql.SQL(
                "COPY {} (run_id, tenant_id, project_id, environment_id, plan_id, plan_version,"
                " engine, run_request_key, header, status, snapshot, created_at) FROM STDIN"
            ).format(sql.Identifier(schema, "dvt_runs"))
        ) as copy,
    ):
        for i in range(runs):
            await copy.write_row(
                (
                    f"run-{i:07d}",
                    f"t{i % 20:02d}",
                    "proj",
                    "prod",
                    "plan",
                    "1.0.0",
                    "bench",
                    uuid.uuid4().hex * 2,
                    header,
                    statuses[(i // 20) % 10],
                    snapshot,
                    base + timedelta(seconds=i),
                )
            )
    await raw.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "dvt_runs")))
    await raw.close()


async def list_runs_100k(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """list_runs on args.runs runs of 20 tenants, 'active runs of a tenant', newest first."""
    rows: list[Row] = []
    async with await _open(dsn, schema) as store:
        await seed_runs(dsn, schema, args.runs)
        raw = await _raw_conn(dsn, schema)
        query = sql.SQL(
            "SELECT run_id, status, created_at FROM {} WHERE tenant_id = %s"
            " AND status = ANY(%s::text[]) ORDER BY created_at DESC, run_id DESC LIMIT 50"
        ).format(sql.Identifier(schema, "dvt_runs"))
        samples: list[float] = []
        start = time.perf_counter()
        for i in range(args.list):
            t0 = time.perf_counter()
            await (await raw.execute(query, (f"t{i % 20:02d}", ["RUNNING", "PAUSED"]))).fetchall()
            samples.append(time.perf_counter() - t0)
        rows.append(
            latency_row(
                "list_runs, 100k runs",
                "bare indexed SELECT",
                samples,
                time.perf_counter() - start,
                "50 active runs of a tenant",
            )
        )
        plan = await (
            await raw.execute(sql.SQL("EXPLAIN ") + query, ("t07", ["RUNNING", "PAUSED"]))
        ).fetchall()
        PLANS.append("\n".join(r[0] for r in plan))
        # The statement dvt sends for two statuses, bare: what the driver and the models add.
        statement = store._q.list_runs(status=True, project=False, environment=False,
                                       statuses=2)
        samples = []
        start = time.perf_counter()
        for i in range(args.list):
            t0 = time.perf_counter()
            await (await raw.execute(statement, {"tenant": f"t{i % 20:02d}", "limit": 50,
                                                 "status": ["PAUSED", "RUNNING"]})).fetchall()
            samples.append(time.perf_counter() - t0)
        rows.append(
            latency_row(
                "list_runs, 100k runs",
                "bare SELECT, dvt's statement",
                samples,
                time.perf_counter() - start,
                "same rows; tuples, no models",
            )
        )
        plan = await (
            await raw.execute(
                sql.SQL("EXPLAIN ") + sql.SQL(statement),  # type: ignore[arg-type]
                {"tenant": "t07", "limit": 50, "status": ["PAUSED", "RUNNING"]},
            )
        ).fetchall()
        PLANS.append("dvt's statement:\n" + "\n".join(r[0] for r in plan))
        samples = []
        start = time.perf_counter()
        for i in range(args.list):
            t0 = time.perf_counter()
            got = await store.list_runs(
                f"t{i % 20:02d}", status=[RunStatus.RUNNING, RunStatus.PAUSED], limit=50
            )
            samples.append(time.perf_counter() - t0)
            assert got
            assert {r.status for r in got} == {RunStatus.RUNNING}
        rows.append(
            latency_row(
                "list_runs, 100k runs",
                "dvt list_runs",
                samples,
                time.perf_counter() - start,
                "50 active runs of a tenant",
            )
        )
        await raw.close()
    return rows
