"""Webhook delivery latency: a run's terminal event committed -> a local receiver got it.

dvt: ``dvt serve --engine reference`` (with its dispatcher) on a fresh schema, one webhook on
``run.completed`` to a receiver on 127.0.0.1, then ``--runs`` runs of a stored one-step plan,
one at a time (the next starts when the previous one's webhook arrived, so the figure is the
unloaded path). A latency is the receiver's arrival time minus the ``RunCompleted`` event's
``persistedAt``, which the append function takes from the database clock inside the appending
transaction: the commit is a little later, so these are upper bounds (one host, one clock).

Two baselines, same receiver, same bodies, same count:

- bare POST: an httpx ``AsyncClient`` posts the body; arrival minus the time just before.
- outbox + NOTIFY without dvt: a row inserted with ``pg_notify`` in one transaction, a LISTEN
  connection of the benchmark reads the row by id and posts its body; arrival minus the row's
  ``clock_timestamp()``. The floor of any outbox design on the same database.

Run: ``python -m benchmarks.bench_api_webhooks`` (``--runs``, ``--dsn``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.bench_api import serve
from benchmarks.bench_store import bench_server
from benchmarks.store_table import Row, latency_row, render
from dvt_engine.builder import PlanBuilder
from dvt_statestore_pg.testing import create_schema, drop_schema, store_url, unique_schema_name

REPO = Path(__file__).resolve().parents[1]


class Receiver:
    """A threaded HTTP server on 127.0.0.1 handing (arrival time, headers, body) to a loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.arrived: asyncio.Queue[tuple[float, dict[str, str], bytes]] = asyncio.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                now = time.time()
                headers = {k.lower(): v for k, v in self.headers.items()}
                loop.call_soon_threadsafe(receiver.arrived.put_nowait, (now, headers, body))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        """The URL of ``path`` here."""
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    async def next(self, timeout: float = 30.0) -> tuple[float, dict[str, str], bytes]:
        """The next request (bounded wait)."""
        async with asyncio.timeout(timeout):
            return await self.arrived.get()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def service(url: str, home: Path) -> Iterator[str]:
    """`dvt serve` allowing webhooks to 127.0.0.1; its base URL."""
    env = {"DVT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with serve(["-m", "dvt_cli", "serve", "--host", "127.0.0.1", "--port", "0", "--store", url,
                "--engine", "reference", "--allow-webhook-host", "127.0.0.1"], env) as base:
        yield base


def api_key(url: str, tenant: str = "bench") -> str:
    """A key with every role the benchmarks need, made with `dvt keys create`."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dvt_cli", "keys", "create", "--tenant", tenant,
                           "--store", url, "--json", "--role", "runner", "--role", "reader",
                           "--role", "admin"], cwd=REPO, capture_output=True, text=True,
                          check=True)
    return str(json.loads(done.stdout)["key"])


def one_step_plan() -> dict[str, Any]:
    """The plan every benchmark run uses: one noop step."""
    return PlanBuilder("one", "1").step("only", "noop").build()


async def subscribe(base: str, key: str, url: str) -> str:
    """Subscribe ``url`` to run.completed and store the plan; the plan's sha256."""
    async with httpx.AsyncClient(base_url=base, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        made = await c.post("/v1/webhooks", json={"url": url, "events": ["run.completed"]})
        made.raise_for_status()
        stored = await c.post("/v1/plans", json=one_step_plan())
        stored.raise_for_status()
        return str(stored.json()["planRef"]["sha256"])


async def dvt_latencies(base: str, key: str, sha: str, receiver: Receiver, runs: int,
                        stages: dict[str, tuple[float, float]] | None = None
                        ) -> tuple[list[float], list[bytes], float]:
    """Run ``runs`` runs one at a time; commit-to-receiver delays and the bodies received
    (``stages``: runId -> (persisted, arrived) epoch seconds, for the breakdown)."""
    delays: list[float] = []
    bodies: list[bytes] = []
    async with httpx.AsyncClient(base_url=base, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        began = time.perf_counter()
        for _ in range(runs):
            answer = await c.post("/v1/runs", json={"planRef": {"sha256": sha}})
            answer.raise_for_status()
            run_id = answer.json()["runId"]
            arrived, _headers, body = await receiver.next()
            payload = json.loads(body)
            if payload["data"]["run"]["runId"] != run_id:
                raise RuntimeError(f"webhook of another run: {payload['data']['run']}")
            persisted = datetime.fromisoformat(payload["data"]["event"]["persistedAt"])
            delays.append(arrived - persisted.timestamp())
            bodies.append(body)
            if stages is not None:
                stages[run_id] = (persisted.timestamp(), arrived)
        return delays, bodies, time.perf_counter() - began


async def breakdown(dsn: str, schema: str, stages: dict[str, tuple[float, float]]
                    ) -> tuple[list[float], list[float]]:
    """Split each delay at the delivery row's created_at (database clock)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            f'SELECT run_id, extract(epoch FROM created_at) FROM "{schema}".dvt_webhook_deliveries')
        created = {str(r): float(t) for r, t in await cur.fetchall()}
    intake, sending = [], []
    for run_id, (persisted, arrived) in stages.items():
        intake.append(created[run_id] - persisted)
        sending.append(arrived - created[run_id])
    return intake, sending


async def bare_post(receiver: Receiver, bodies: list[bytes]) -> tuple[list[float], float]:
    """The same bodies posted by a bare httpx client, one at a time."""
    delays: list[float] = []
    async with httpx.AsyncClient(timeout=30) as c:
        began = time.perf_counter()
        for body in bodies:
            sent = time.time()
            await c.post(receiver.url("/bare"), content=body,
                         headers={"content-type": "application/json"})
            arrived, _, _ = await receiver.next()
            delays.append(arrived - sent)
        return delays, time.perf_counter() - began


async def outbox_notify(dsn: str, schema: str, receiver: Receiver, bodies: list[bytes]
                        ) -> tuple[list[float], float]:
    """Insert + NOTIFY in one transaction; a LISTEN loop reads the row and POSTs its body."""
    table = f'"{schema}".bench_outbox'
    channel = f"bench_outbox_{os.getpid()}"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as writer, \
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener, \
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as reader, \
            httpx.AsyncClient(timeout=30) as client:
        await writer.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY,"
                             " at timestamptz NOT NULL DEFAULT clock_timestamp(), body text)")
        await listener.execute(f"LISTEN {channel}")

        async def relay() -> None:
            async for note in listener.notifies():
                cur = await reader.execute(f"SELECT at, body FROM {table} WHERE id = %s",
                                           (int(note.payload),))
                row = await cur.fetchone()
                assert row is not None
                await client.post(receiver.url("/outbox"), content=row[1].encode(),
                                  headers={"content-type": "application/json",
                                           "x-at": str(row[0].timestamp())})

        task = asyncio.create_task(relay())
        delays: list[float] = []
        began = time.perf_counter()
        try:
            for body in bodies:
                async with writer.transaction():
                    cur = await writer.execute(
                        f"INSERT INTO {table} (body) VALUES (%s) RETURNING id",
                        (body.decode(),))
                    row = await cur.fetchone()
                    assert row is not None
                    await writer.execute("SELECT pg_notify(%s, %s)", (channel, str(row[0])))
                arrived, headers, _ = await receiver.next()
                delays.append(arrived - float(headers["x-at"]))
        finally:
            task.cancel()
        return delays, time.perf_counter() - began


async def run(args: argparse.Namespace, dsn: str, server: str) -> str:
    """The service and the baselines on one fresh schema each; the table."""
    schemas = [unique_schema_name("dvt_bench_hooks"), unique_schema_name("dvt_bench_outbox")]
    for schema in schemas:
        create_schema(dsn, schema)
    url = store_url(dsn, schemas[0])
    home = Path(f"/tmp/dvt-bench-hooks-{os.getpid()}")
    receiver = Receiver(asyncio.get_running_loop())
    rows: list[Row] = []
    try:
        key = api_key(url)
        with service(url, home) as base:
            sha = await subscribe(base, key, receiver.url("/dvt"))
            await dvt_latencies(base, key, sha, receiver, min(20, args.runs))  # warm-up
            stages: dict[str, tuple[float, float]] = {}
            delays, bodies, took = await dvt_latencies(base, key, sha, receiver, args.runs,
                                                       stages)
            intake, sending = await breakdown(dsn, schemas[0], stages)
        rows.append(latency_row("terminal event commit to receiver", "dvt dispatcher",
                                delays, took, "one run at a time; p90 "
                                f"{sorted(delays)[int(0.9 * len(delays))] * 1000:.1f} ms"))
        rows.append(latency_row("  of which: commit to delivery row", "dvt intake", intake, took,
                                "outbox NOTIFY, claim, subscribers, snapshot, insert"))
        rows.append(latency_row("  of which: delivery row to receiver", "dvt sender", sending,
                                took, "claim, sign, POST"))
        delays, took = await bare_post(receiver, bodies)
        rows.append(latency_row("POST to receiver", "bare httpx POST", delays, took,
                                "same bodies"))
        delays, took = await outbox_notify(dsn, schemas[1], receiver, bodies)
        rows.append(latency_row("outbox commit to receiver", "INSERT + NOTIFY, LISTEN, POST",
                                delays, took, "no dvt; same bodies"))
    finally:
        receiver.close()
        for schema in schemas:
            drop_schema(dsn, schema)
        shutil.rmtree(home, ignore_errors=True)
    return render(rows, server)


def main(argv: list[str] | None = None) -> None:
    """Start PostgreSQL unless --dsn is given, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    with bench_server(args.dsn) as (dsn, server):
        print(asyncio.run(run(args, dsn, server)))


if __name__ == "__main__":
    main()
