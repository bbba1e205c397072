"""Benchmarks of the HTTP service (`dvt serve`), next to a bare FastAPI app doing one INSERT.

- create run: ``POST /v1/runs`` (a stored plan by ``planRef``, one noop step, reference engine)
  at 1, 16 and 64 concurrent clients, against the baseline's ``POST /runs``, which inserts one
  row with psycopg and answers 201: the floor an HTTP service over the same PostgreSQL has.
- filtered run list: ``GET /v1/runs?label=batch:b7&limit=50`` (and ``planId``) on a tenant of
  ``--list-runs`` runs (seeded like the store benchmark's), one client, against the baseline's
  ``GET /runs``, which sends the same SELECT on the same table and answers the rows as JSON.
- event commit to SSE client: 100 clients follow one run's stream while an operator pauses and
  resumes it; each event's delay is the client's receive time minus its ``persistedAt`` (the
  database clock inside the appending transaction, so commit time is slightly earlier than
  measured from: the figures are upper bounds).

Both servers are subprocesses on 127.0.0.1 (uvicorn, one worker); the clients are httpx
AsyncClients in this process. PostgreSQL is started through dvt_local for the run (``--dsn``
to use another). ``--quick`` for a smoke run. The table printed is what docs/benchmarks.md
records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from benchmarks.bench_store import bench_server
from benchmarks.store_table import Row, latency_row, percentile, render
from dvt_engine.builder import PlanBuilder
from dvt_statestore_pg.testing import (
    create_schema,
    drop_schema,
    seed_runs,
    store_url,
    unique_schema_name,
)

REPO = Path(__file__).resolve().parents[1]
SELF = str(Path(__file__).resolve())
CONCURRENCY = (1, 16, 64)
BASELINE_DDL = """CREATE TABLE IF NOT EXISTS {schema}.bench_runs (
    tenant_id text NOT NULL, run_id text NOT NULL, body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (tenant_id, run_id))"""


def baseline_app(dsn: str, schema: str, runs_schema: str | None = None) -> Any:
    """A bare FastAPI app: ``POST /runs`` inserts one row through a psycopg pool, answers 201;
    ``GET /runs?label=k:v&planId=`` lists ``runs_schema``'s run index like dvt's query."""
    pool = AsyncConnectionPool(dsn, min_size=4, max_size=10, open=False)

    async def lifespan(app: FastAPI) -> Any:
        await pool.open()
        async with pool.connection() as conn:
            await conn.execute(BASELINE_DDL.format(schema=schema))  # type: ignore[arg-type]
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)
    insert = f"INSERT INTO {schema}.bench_runs (tenant_id, run_id, body) VALUES (%s, %s, %s)"

    @app.post("/runs", status_code=201)
    async def create(request: Request) -> JSONResponse:
        body = await request.json()
        run_id = str(uuid.uuid4())
        async with pool.connection() as conn:
            await conn.execute(insert, ("bench", run_id, json.dumps(body)))
        return JSONResponse({"runId": run_id, "status": "PENDING"}, status_code=201)

    @app.get("/runs")
    async def listed(label: str | None = None, planId: str | None = None
                     ) -> JSONResponse:
        key, _, value = (label or "").partition(":")
        # Only the conditions asked for, as dvt does: "x IS NULL OR ..." would keep a prepared
        # statement's generic plan off the labels index.
        where, params = ["tenant_id = 'bench'"], []
        if label:
            where.append("labels @> %s::jsonb")
            params.append(json.dumps({key: value}))
        if planId:
            where.append("plan_id = %s")
            params.append(planId)
        async with pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT run_id, status, plan_id, labels, created_at FROM {runs_schema}.dvt_runs"
                f" WHERE {' AND '.join(where)} ORDER BY created_at DESC, run_id DESC LIMIT 51",
                params)
            rows = await cur.fetchall()
        return JSONResponse({"items": [{"runId": r[0], "status": r[1], "planId": r[2],
                                        "labels": r[3], "createdAt": r[4].isoformat()}
                                       for r in rows[:50]]})

    return app


def _drain(stream: IO[str]) -> None:
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


@contextmanager
def serve(args: list[str], env: dict[str, str]) -> Iterator[str]:
    """A server subprocess listening on a port of its choosing; its base URL."""
    process = subprocess.Popen([sys.executable, *args], env={**os.environ, **env}, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    try:
        for line in process.stderr:  # uvicorn names its real port once it listens
            found = re.search(r"running on (http://[0-9.:]+)", line)
            if found:
                break
        else:
            raise RuntimeError(f"server did not start: {args}")
        _drain(process.stderr)
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _load(url: str, path: str, body: dict[str, Any], headers: dict[str, str],
                clients: int, total: int) -> tuple[list[float], float]:
    """``total`` POSTs from ``clients`` concurrent clients: latencies and the elapsed time."""
    latencies: list[float] = []
    remaining = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=60) as client:

        async def worker() -> None:
            for _ in remaining:
                start = time.perf_counter()
                answer = await client.post(path, json=body)
                latencies.append(time.perf_counter() - start)
                if answer.status_code != 201:
                    raise RuntimeError(f"{path}: {answer.status_code} {answer.text}")

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return latencies, time.perf_counter() - began


def _requests(clients: int, args: argparse.Namespace) -> int:
    return max(args.requests, clients * args.per_client)


async def create_rows(baseline: str, service: str, key: str, sha: str,
                      args: argparse.Namespace) -> list[Row]:
    """Create-run throughput and latency per concurrency, baseline first each time."""
    rows: list[Row] = []
    auth = {"Authorization": f"Bearer {key}"}
    for clients in CONCURRENCY:
        total = _requests(clients, args)
        warm = min(total, 50)
        await _load(baseline, "/runs", {"planRef": {"sha256": sha}}, {}, clients, warm)
        await _load(service, "/v1/runs", {"planRef": {"sha256": sha}}, auth, clients, warm)
        samples, took = await _load(baseline, "/runs", {"planRef": {"sha256": sha}}, {},
                                    clients, total)
        scenario = f"create run, {clients} client{'s' if clients > 1 else ''}"
        rows.append(latency_row(scenario, "bare FastAPI + INSERT", samples, took))
        samples, took = await _load(service, "/v1/runs", {"planRef": {"sha256": sha}}, auth,
                                    clients, total)
        rows.append(latency_row(scenario, "dvt `POST /v1/runs`", samples, took,
                                "reference engine runs each one"))
        print(f"    {rows[-2]}\n    {rows[-1]}", file=sys.stderr, flush=True)
    return rows


async def list_rows(baseline: str, service: str, key: str, args: argparse.Namespace
                    ) -> list[Row]:
    """One client listing a filtered page of 50, ``args.list_requests`` times per filter."""
    rows: list[Row] = []
    for name, query in (("label (0.1%)", {"label": "batch:b7"}),
                        ("planId (2%)", {"planId": "plan-7"})):
        for url, path, auth, subject in (
                (baseline, "/runs", {}, "bare FastAPI + SELECT"),
                (service, "/v1/runs", {"Authorization": f"Bearer {key}"}, "dvt `GET /v1/runs`")):
            samples: list[float] = []
            async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60) as client:
                for _ in range(10):
                    (await client.get(path, params=query)).raise_for_status()
                began = time.perf_counter()
                for _ in range(args.list_requests):
                    start = time.perf_counter()
                    answer = await client.get(path, params={**query, "limit": 50})
                    samples.append(time.perf_counter() - start)
                    answer.raise_for_status()
                took = time.perf_counter() - began
            rows.append(latency_row(f"run list, {name}, {args.list_runs:,} runs", subject,
                                    samples, took, f"{len(answer.json()['items'])} items"))
            print(f"    {rows[-1]}", file=sys.stderr, flush=True)
    return rows


async def sse_row(service: str, key: str, args: argparse.Namespace) -> Row:
    """Delay from an event's commit to its arrival at each of ``args.listeners`` clients."""
    auth = {"Authorization": f"Bearer {key}"}
    plan = (PlanBuilder("gated", "1").step("build", "noop")
            .approval("signoff", depends_on=["build"]).build())
    delays: list[float] = []
    async with httpx.AsyncClient(base_url=service, headers=auth, timeout=120,
                                 limits=httpx.Limits(max_connections=args.listeners + 4)) as c:
        run_id = (await c.post("/v1/runs", json={"plan": plan})).json()["runId"]
        after = await _wait_for_gate(c, run_id)
        ready = asyncio.Semaphore(0)

        async def listen(control: bool = False) -> None:
            resumed = 0
            async with c.stream("GET", f"/v1/runs/{run_id}/stream",
                                params={"after": after}) as s:
                ready.release()
                async for line in s.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    now = time.time()
                    event = json.loads(line[5:])
                    persisted = datetime.fromisoformat(event["persistedAt"]).timestamp()
                    if not control:
                        delays.append(now - persisted)
                    kind = event["eventType"]
                    resumed += kind == "RunResumed"
                    if resumed == args.rounds:
                        return
                    if control and kind in ("RunPaused", "RunResumed"):
                        # The next signal only once the last one took effect: a RESUME before
                        # RunPaused would be a no-op.
                        await _signal(c, run_id, "RESUME" if kind == "RunPaused" else "PAUSE")

        listeners = [asyncio.create_task(listen()) for _ in range(args.listeners)]
        controller = asyncio.create_task(listen(control=True))
        for _ in range(args.listeners + 1):
            await ready.acquire()
        began = time.perf_counter()
        await _signal(c, run_id, "PAUSE")
        await asyncio.wait_for(asyncio.gather(controller, *listeners), timeout=300)
        took = time.perf_counter() - began
    return latency_row(f"event commit to SSE, {args.listeners} clients",
                       "dvt `GET /v1/runs/{id}/stream`", delays, took,
                       f"{len(delays) // args.listeners} events x {args.listeners} clients; "
                       f"p90 {percentile(delays, 0.9) * 1000:.1f} ms")


async def _signal(c: httpx.AsyncClient, run_id: str, kind: str) -> None:
    sent = await c.post(f"/v1/runs/{run_id}/signals", json={"type": kind})
    if sent.status_code != 202 or sent.json()["decision"] != "accepted":
        raise RuntimeError(f"{kind}: {sent.text}")


async def _wait_for_gate(c: httpx.AsyncClient, run_id: str) -> str:
    """The run's stream until it waits for approval; the runSeq to follow from."""
    async with c.stream("GET", f"/v1/runs/{run_id}/stream") as s:
        last = "0"
        async for line in s.aiter_lines():
            if line.startswith("id:"):
                last = line[3:].strip()
            if line.startswith("event:") and "StepAwaitingApproval" in line:
                return last
    raise RuntimeError("the run never reached its gate")


def _key(url: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvt_cli", "keys", "create", "--tenant", "bench",
                           "--store", url, "--json", "--role", "runner", "--role", "reader",
                           "--role", "operator"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    return str(json.loads(done.stdout)["key"])


async def run(args: argparse.Namespace, dsn: str, server: str) -> str:
    """Both servers on fresh schemas, then every scenario."""
    schemas = [unique_schema_name("dvt_bench_api"), unique_schema_name("dvt_bench_base")]
    for schema in schemas:
        create_schema(dsn, schema)
    url = store_url(dsn, schemas[0])
    home = Path(f"/tmp/dvt-bench-api-{os.getpid()}")
    env = {"DVT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    try:
        key = _key(url)
        with serve(["-m", "dvt_cli", "serve", "--host", "127.0.0.1", "--port", "0",
                    "--store", url, "--engine", "reference"], env) as service, \
             serve([SELF, "--serve-baseline", dsn, "--baseline-schema", schemas[1],
                    "--runs-schema", schemas[0]], env) as base:
            async with httpx.AsyncClient(base_url=service, timeout=60,
                                         headers={"Authorization": f"Bearer {key}"}) as c:
                stored = await c.post("/v1/plans", json=PlanBuilder("one", "1")
                                      .step("only", "noop").build())
                sha = stored.json()["planRef"]["sha256"]
            rows = await create_rows(base, service, key, sha, args)
            seed_runs(dsn, schemas[0], "bench", args.list_runs)
            rows += await list_rows(base, service, key, args)
            rows.append(await sse_row(service, key, args))
    finally:
        for schema in schemas:
            drop_schema(dsn, schema)
        shutil.rmtree(home, ignore_errors=True)
    return render(rows, server)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--requests", type=int, default=300, help="create runs per level")
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--listeners", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=25, help="PAUSE+RESUME pairs")
    parser.add_argument("--serve-baseline", metavar="DSN", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-schema", help=argparse.SUPPRESS)
    parser.add_argument("--runs-schema", help=argparse.SUPPRESS)
    parser.add_argument("--list-runs", type=int, default=50_000, help="runs of the listed tenant")
    parser.add_argument("--list-requests", type=int, default=500, help="list requests per row")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.per_client, args.listeners, args.rounds = 30, 2, 10, 3
        args.list_runs, args.list_requests = 5000, 50
    return args


def main(argv: list[str] | None = None) -> None:
    """Start PostgreSQL unless --dsn is given, run every scenario, print the table."""
    args = parse_args(argv)
    if args.serve_baseline:
        app = baseline_app(args.serve_baseline, args.baseline_schema, args.runs_schema)
        uvicorn.run(app, host="127.0.0.1", port=0, log_level="info", access_log=False)
        return
    with bench_server(args.dsn) as (dsn, server):
        print(asyncio.run(run(args, dsn, server)))


if __name__ == "__main__":
    main()
