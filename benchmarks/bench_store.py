"""Benchmarks of the PostgreSQL state store, each next to bare psycopg doing the same work.

Run: ``python benchmarks/bench_store.py`` (a durable local server is started for the run; pass
``--dsn`` to use another). ``--quick`` shrinks every count for a smoke run. The table printed at
the end is what docs/benchmarks.md records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from dvt_statestore_pg.testing import (
    create_schema,
    drop_schema,
    start_managed_postgres,
    unique_schema_name,
)

# A durable server: the baseline and dvt both pay a real commit (fsync on, synchronous commit).
BENCH_SETTINGS = {"max_connections": "200", "shared_buffers": "256MB"}


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    subject: str
    count: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""

    @property
    def per_second(self) -> float:
        """Operations per second over the whole scenario."""
        return self.count / self.seconds if self.seconds > 0 else float("inf")


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of samples, nearest-rank."""
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


def latency_row(
    scenario: str, subject: str, samples: list[float], seconds: float, note: str = ""
) -> Row:
    """A row from per-operation latencies in seconds."""
    return Row(
        scenario,
        subject,
        len(samples),
        seconds,
        percentile(samples, 0.5) * 1000,
        percentile(samples, 0.99) * 1000,
        note,
    )


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
                    "COPY raw_events (run_id, run_seq, idempotency_key, event_id, event_type, tenant_id,"
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


Scenario = Callable[[str, str, argparse.Namespace], Awaitable[list[Row]]]


async def baseline_scenarios(dsn: str, schema: str, args: argparse.Namespace) -> list[Row]:
    """The bare-database rows."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(BASELINE_DDL)
    return [
        await baseline_single(dsn, schema, args.single),
        await baseline_copy(dsn, schema, args.batches, 100),
    ]


def machine() -> str:
    """A one-line description of this machine."""
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB RAM, {platform.platform()}, Python {platform.python_version()}"


def render(rows: list[Row], server: str) -> str:
    """The results as a Markdown table."""
    lines = [
        f"machine: {machine()}",
        f"server: {server}",
        "",
        "| scenario | subject | count | ops/s | p50 ms | p99 ms | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        p50 = f"{r.p50_ms:.3f}" if r.p50_ms is not None else "-"
        p99 = f"{r.p99_ms:.3f}" if r.p99_ms is not None else "-"
        lines.append(
            f"| {r.scenario} | {r.subject} | {r.count} | {r.per_second:,.0f} | {p50} | {p99} | {r.note} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace, dsn: str, server: str) -> str:
    """Every scenario, each in its own fresh schema."""
    rows: list[Row] = []
    scenarios: list[Scenario] = [baseline_scenarios]
    scenarios += _dvt_scenarios()
    for scenario in scenarios:
        schema = unique_schema_name("dvt_bench")
        create_schema(dsn, schema)
        try:
            rows += await scenario(dsn, schema, args)
        finally:
            drop_schema(dsn, schema)
    return render(rows, server)


def _dvt_scenarios() -> list[Scenario]:
    return []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--single", type=int, default=5000)
    parser.add_argument("--batches", type=int, default=500)
    args = parser.parse_args(argv)
    if args.quick:
        args.single, args.batches = 300, 30
    return args


def main(argv: list[str] | None = None) -> None:
    """Start a server unless --dsn is given, run every scenario, print the table."""
    args = parse_args(argv)
    if args.dsn:
        print(asyncio.run(run(args, args.dsn, "external (--dsn)")))
        return
    pg = start_managed_postgres(settings=BENCH_SETTINGS)
    try:
        with psycopg.connect(pg.dsn()) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        server = f"PostgreSQL {version[0] if version else '?'} on 127.0.0.1, fsync on, synchronous_commit on"
        print(asyncio.run(run(args, pg.dsn(), server)))
    finally:
        pg.destroy()


if __name__ == "__main__":
    main()
