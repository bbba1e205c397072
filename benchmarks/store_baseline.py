"""Bare psycopg doing the work the store does: the baseline each dvt figure stands next to."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.store_table import Row, latency_row


def envelope(run_id: str, seq: int, key: str) -> str:
    """A realistic event envelope (the same JSON the store writes)."""
    now = datetime.now(UTC).isoformat()
    return json.dumps(
        {
            "eventId": str(uuid.uuid4()),
            "eventType": "StepCompleted",
            "tenantId": "bench-tenant",
            "projectId": "bench-project",
            "environmentId": "prod",
            "runId": run_id,
            "stepId": f"step-{seq}",
            "planId": "bench-plan",
            "planVersion": "1.0.0",
            "logicalAttemptId": 1,
            "engineAttemptId": 1,
            "idempotencyKey": key,
            "emittedAt": now,
            "emittedBy": "step-runner",
            "payload": {"output": {"rows": seq}, "artifacts": []},
            "runSeq": seq,
            "persistedAt": now,
        }
    )


BASELINE_DDL = """
CREATE TABLE raw_events (
  run_id text NOT NULL, run_seq bigint NOT NULL, idempotency_key text NOT NULL,
  event_id text NOT NULL, event_type text NOT NULL, tenant_id text NOT NULL,
  emitted_at timestamptz NOT NULL, persisted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  envelope json NOT NULL, PRIMARY KEY (run_id, run_seq), UNIQUE (run_id, idempotency_key))
"""

RAW_INSERT = (
    "INSERT INTO raw_events (run_id, run_seq, idempotency_key, event_id, event_type, tenant_id,"
    " emitted_at, envelope) VALUES (%s, %s, %s, %s, 'StepCompleted', 'bench-tenant', now(), %s)"
)

RAW_RUNS_DDL = "CREATE TABLE raw_runs (run_id text PRIMARY KEY, last_seq bigint NOT NULL)"

# The run's next runSeq allocated in the statement that inserts the event: the counter row's
# update makes concurrent writers of one run wait for each other, as a gap-free sequence needs.
RAW_INSERT_NEXT_SEQ = (
    "WITH s AS (UPDATE raw_runs SET last_seq = last_seq + 1 WHERE run_id = %s"
    " RETURNING run_id, last_seq)"
    " INSERT INTO raw_events (run_id, run_seq, idempotency_key, event_id, event_type, tenant_id,"
    " emitted_at, envelope) SELECT s.run_id, s.last_seq, %s, %s, 'StepCompleted',"
    " 'bench-tenant', now(), %s FROM s"
)


async def baseline_single(dsn: str, schema: str, n: int) -> Row:
    """One autocommit INSERT per event, one run, seq chosen by the client."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        run_id = str(uuid.uuid4())
        samples: list[float] = []
        start = time.perf_counter()
        for seq in range(1, n + 1):
            key = uuid.uuid4().hex * 2
            t0 = time.perf_counter()
            await conn.execute(
                RAW_INSERT, (run_id, seq, key, str(uuid.uuid4()), envelope(run_id, seq, key))
            )
            samples.append(time.perf_counter() - t0)
        return latency_row(
            "single append", "bare psycopg INSERT", samples, time.perf_counter() - start
        )


async def baseline_copy(dsn: str, schema: str, batches: int, batch_size: int) -> Row:
    """COPY ``batch_size`` rows per transaction, many runs."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        await conn.commit()
        samples: list[float] = []
        start = time.perf_counter()
        for _ in range(batches):
            run_id = str(uuid.uuid4())
            rows = []
            for seq in range(1, batch_size + 1):
                key = uuid.uuid4().hex * 2
                rows.append(
                    (
                        run_id,
                        seq,
                        key,
                        str(uuid.uuid4()),
                        "StepCompleted",
                        "bench-tenant",
                        datetime.now(UTC),
                        envelope(run_id, seq, key),
                    )
                )
            t0 = time.perf_counter()
            async with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY raw_events (run_id, run_seq, idempotency_key, event_id, event_type,"
                    " tenant_id,"
                    " emitted_at, envelope) FROM STDIN"
                ) as copy,
            ):
                for row in rows:
                    await copy.write_row(row)
            await conn.commit()
            samples.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        row = latency_row(f"batch append ({batch_size}/tx)", "bare psycopg COPY", samples, elapsed)
        row.count = batches * batch_size
        row.seconds = sum(samples)
        row.note = "p50/p99 per batch"
        return row


async def baseline_executemany(dsn: str, schema: str, batches: int, batch_size: int) -> Row:
    """executemany of ``batch_size`` INSERTs per transaction (psycopg pipelines them)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        await conn.commit()
        samples: list[float] = []
        for _ in range(batches):
            run_id = str(uuid.uuid4())
            params = []
            for seq in range(1, batch_size + 1):
                key = uuid.uuid4().hex * 2
                params.append((run_id, seq, key, str(uuid.uuid4()), envelope(run_id, seq, key)))
            t0 = time.perf_counter()
            async with conn.cursor() as cur:
                await cur.executemany(RAW_INSERT, params)
            await conn.commit()
            samples.append(time.perf_counter() - t0)
        row = latency_row(
            f"batch append ({batch_size}/tx)", "bare psycopg executemany", samples, sum(samples)
        )
        row.count = batches * batch_size
        row.note = "p50/p99 per batch"
        return row


async def baseline_scenarios(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """The bare-database rows."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(BASELINE_DDL)
    return [
        await baseline_single(dsn, schema, args.single),
        await baseline_copy(dsn, schema, args.batches, 100),
        await baseline_executemany(dsn, schema, args.batches, 100),
    ]


_BARE_STATUS = {"RunStarted": "RUNNING", "RunCompleted": "COMPLETED", "RunFailed": "FAILED",
                "RunCancelled": "CANCELLED", "StepStarted": "RUNNING",
                "StepCompleted": "COMPLETED", "StepFailed": "FAILED"}


async def bare_read_and_fold(raw: psycopg.AsyncConnection[Any], schema: str) -> tuple[int, float]:
    """The floor of a rebuild: read the log in run order, parse each envelope, fold it into a
    dict per run (status, each step's status and last payload), and write each run's JSON
    back, a page of 500 runs per UPDATE (the statement shape dvt's rebuild uses)."""
    await raw.execute(
        sql.SQL(
            "CREATE TABLE raw_snapshots AS SELECT tenant_id, run_id, snapshot FROM {};"
            " ALTER TABLE raw_snapshots ADD PRIMARY KEY (tenant_id, run_id)"
        ).format(sql.Identifier(schema, "dvt_runs"))
    )
    write = (
        "UPDATE raw_snapshots r SET snapshot = (u->>2)::json FROM json_array_elements(%s::json) u"
        " WHERE r.tenant_id = u->>0 AND r.run_id = u->>1"
    )
    start = time.perf_counter()
    count = 0
    page: list[tuple[str, str, str]] = []
    state: dict[str, Any] = {}
    current: tuple[str, str] | None = None
    cur = raw.cursor(name="bench_read")
    async with raw.transaction():
        await cur.execute(
            sql.SQL(
                "SELECT tenant_id, run_id, run_seq, envelope::text FROM {}"
                " ORDER BY tenant_id, run_id, run_seq"
            ).format(sql.Identifier(schema, "dvt_events"))
        )
        async for tenant, run, seq, text in cur:
            if (tenant, run) != current:
                if current is not None:
                    page.append((*current, json.dumps(state)))
                current, state = (tenant, run), {"status": "PENDING", "steps": {}}
            event = json.loads(text)
            count += 1
            status = _BARE_STATUS.get(event["eventType"])
            step = event.get("stepId")
            if step is None:
                state["status"] = status or state["status"]
            else:
                state["steps"][step] = {"status": status, "payload": event["payload"]}
            state["lastEventSeq"] = seq
            if len(page) >= 500:
                await raw.execute(write, (json.dumps(page),))
                page = []
    if current is not None:
        page.append((*current, json.dumps(state)))
    if page:
        await raw.execute(write, (json.dumps(page),))
    return count, time.perf_counter() - start
