"""Soak: `dvt serve` under steady load for ``--minutes``; memory, descriptors and connections.

`dvt serve --engine reference` runs on a PostgreSQL database of its own. Meanwhile the
benchmark starts ``--rate`` runs a minute of a small stored plan (three noop steps) through
HTTP, follows each run's stream until its end, keeps ``--tenant-clients`` tenant-stream clients
connected, and receives every ``run.completed`` webhook on a receiver on 127.0.0.1. Every
``--sample-every`` seconds it samples the server process (RSS from /proc, open descriptors and
how many of them are sockets) and the database (its connections in ``pg_stat_activity``, read
from another database so the sampling connection is not counted).

The first samples are the warm-up (pools fill, caches and imports settle): the window is
measured from ``--warmup`` seconds on (default: a tenth of the run, at most 60 s). The table
gives each metric at the window's start, middle and end, its maximum and its least-squares
slope per minute. The run fails (exit 1) when, over the window:

- RSS grows by more than ``--rss-bound-mib`` (default 32 MiB),
- open descriptors or sockets grow by more than ``--fd-bound`` (default 16),
- database connections grow by more than ``--conn-bound`` (default 3),
- or a run did not complete, or its webhook or its events did not arrive, by the end.

Run: ``python -m benchmarks.bench_api_soak`` (``--minutes`` 10 by default; ``--minutes 1``
for a short run; ``--dsn`` for another server whose role may create databases).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from benchmarks.bench_api_idle import _url
from benchmarks.bench_store import bench_server
from benchmarks.store_table import machine
from dvt_engine.builder import PlanBuilder

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20


@dataclass
class Sample:
    """One look at the server process and its database."""

    at: float  # seconds since the load started
    rss: int
    fds: int
    sockets: int
    connections: int


@dataclass
class Tally:
    """What the clients saw."""

    started: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)  # RunCompleted on the run's stream
    tenant_seen: list[set[str]] = field(default_factory=list)  # RunCompleted per tenant client
    hooked: set[str] = field(default_factory=set)  # run.completed webhooks received
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _receiver(tally: Tally) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with tally.lock:
                tally.hooked.add(json.loads(body)["data"]["run"]["runId"])
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextmanager
def _serve(url: str, home: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {**os.environ, "DVT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("DVT_STORE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "dvt_cli", "serve", "--port", "0", "--store", url,
         "--engine", "reference", "--allow-webhook-host", "127.0.0.1"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    base = None
    for line in process.stderr:
        found = re.search(r"running on (http://[0-9.:]+)", line)
        if found:
            base = found.group(1)
            break
    if base is None:
        raise SystemExit("dvt serve did not start")
    threading.Thread(target=lambda: [None for _ in process.stderr or ()], daemon=True).start()
    try:
        yield process, base
    finally:
        process.terminate()
        code = process.wait(timeout=60)
        if code != 0:
            print(f"dvt serve exited with {code}", file=sys.stderr)


def _sample(pid: int, admin_dsn: str, database: str, at: float) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
    fds = sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        with contextlib.suppress(OSError):  # closed meanwhile
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                           (database,)).fetchone()
    return Sample(at, rss, fds, sockets, int(row[0]) if row else 0)


async def _follow_run(c: httpx.AsyncClient, run_id: str, tally: Tally) -> None:
    try:
        async with asyncio.timeout(120), c.stream("GET", f"/v1/runs/{run_id}/stream") as s:
            async for line in s.aiter_lines():
                if line.startswith("event:") and "RunCompleted" in line:
                    tally.completed.add(run_id)
                    return
    except Exception as exc:  # counted: the run then shows as not completed
        tally.errors.append(f"run stream {run_id}: {type(exc).__name__} {exc}")


async def _tenant_client(c: httpx.AsyncClient, seen: set[str], tally: Tally,
                         ready: asyncio.Event) -> None:
    try:
        async with c.stream("GET", "/v1/stream") as s:
            ready.set()
            async for line in s.aiter_lines():
                if line.startswith("data:") and '"RunCompleted"' in line:
                    seen.add(json.loads(line[5:])["runId"])
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        tally.errors.append(f"tenant stream: {type(exc).__name__} {exc}")


def _slope(samples: list[Sample], value: str) -> float:
    """Least-squares slope of ``value`` per minute."""
    xs = [s.at / 60 for s in samples]
    ys = [float(getattr(s, value)) for s in samples]
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def soak(args: argparse.Namespace, base: str, key: str, pid: int, admin_dsn: str,
               database: str, receiver_url: str, tally: Tally) -> list[Sample]:
    """The load, the clients and the sampler for ``args.minutes``; every sample."""
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        made = await c.post("/v1/webhooks", json={"url": receiver_url,
                                                  "events": ["run.completed"]})
        made.raise_for_status()
        plan = (PlanBuilder("soak", "1").step("a", "noop").step("b", "noop", depends_on=["a"])
                .step("c", "noop", depends_on=["b"]).build())
        stored = await c.post("/v1/plans", json=plan)
        stored.raise_for_status()
        sha = stored.json()["planRef"]["sha256"]
        clients = []
        for _ in range(args.tenant_clients):
            seen: set[str] = set()
            tally.tenant_seen.append(seen)
            ready = asyncio.Event()
            clients.append(asyncio.create_task(_tenant_client(c, seen, tally, ready)))
            await ready.wait()
        followers: set[asyncio.Task[None]] = set()
        began = time.monotonic()
        end = began + args.minutes * 60
        next_sample = began
        next_run = began
        interval = 60.0 / args.rate
        while (now := time.monotonic()) < end:
            if now >= next_sample:
                samples.append(await asyncio.to_thread(_sample, pid, admin_dsn, database,
                                                       now - began))
                next_sample += args.sample_every
            if now >= next_run:
                answer = await c.post("/v1/runs", json={"planRef": {"sha256": sha}})
                if answer.status_code != 201:
                    tally.errors.append(f"POST /v1/runs: {answer.status_code} {answer.text}")
                else:
                    run_id = answer.json()["runId"]
                    tally.started.add(run_id)
                    task = asyncio.create_task(_follow_run(c, run_id, tally))
                    followers.add(task)
                    task.add_done_callback(followers.discard)
                next_run += interval
            await asyncio.sleep(max(0.0, min(next_run, next_sample) - time.monotonic()))
        samples.append(await asyncio.to_thread(_sample, pid, admin_dsn, database,
                                               time.monotonic() - began))
        # Drain: the last runs finish, their webhooks and tenant events arrive (bounded).
        async with asyncio.timeout(120):
            while followers:
                await asyncio.wait(set(followers))
        for _ in range(300):  # at most a minute for the last deliveries
            if tally.started <= tally.hooked and all(
                    tally.started <= seen for seen in tally.tenant_seen):
                break
            await asyncio.sleep(0.2)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    return samples


def report(args: argparse.Namespace, samples: list[Sample], tally: Tally) -> list[str]:
    """Print the table; the bounds that were exceeded."""
    warmup = args.warmup if args.warmup is not None else min(60.0, args.minutes * 6)
    window = [s for s in samples if s.at >= warmup] or samples
    first, mid, last = window[0], window[len(window) // 2], window[-1]
    print(f"{len(samples)} samples, window from {first.at:.0f} s to {last.at:.0f} s;"
          f" {len(tally.started)} runs started")
    print("| metric | start | mid | end | max | slope /min | bound | |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    failed = []
    checks = [("RSS (MiB)", "rss", MIB, args.rss_bound_mib),
              ("open fds", "fds", 1, args.fd_bound),
              ("sockets", "sockets", 1, args.fd_bound),
              ("PG connections", "connections", 1, args.conn_bound)]
    for label, attr, unit, bound in checks:
        values = [getattr(s, attr) / unit for s in window]
        growth = values[-1] - values[0]
        ok = growth <= bound
        if not ok:
            failed.append(f"{label} grew by {growth:.1f} (bound {bound})")
        print(f"| {label} | {values[0]:.1f} | {getattr(mid, attr) / unit:.1f} |"
              f" {values[-1]:.1f} | {max(values):.1f} | {_slope(window, attr) / unit:+.2f} |"
              f" growth <= {bound} | {'ok' if ok else 'EXCEEDED'} |")
    missing_runs = tally.started - tally.completed
    missing_hooks = tally.started - tally.hooked
    missing_tenant = [len(tally.started - seen) for seen in tally.tenant_seen]
    print(f"runs completed {len(tally.completed)}/{len(tally.started)}, webhooks"
          f" {len(tally.hooked & tally.started)}/{len(tally.started)}, tenant-stream clients"
          f" missing {missing_tenant}, errors {len(tally.errors)}")
    for error in tally.errors[:10]:
        print(f"  error: {error}")
    if missing_runs:
        failed.append(f"{len(missing_runs)} runs not completed")
    if missing_hooks:
        failed.append(f"{len(missing_hooks)} webhooks not received")
    if any(missing_tenant):
        failed.append("tenant-stream clients missed runs")
    if tally.errors:
        failed.append(f"{len(tally.errors)} client errors")
    return failed


def main(argv: list[str] | None = None) -> None:
    """Start PostgreSQL unless --dsn is given, soak, print the table, exit 1 on a breach."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dsn", default=os.environ.get("DVT_PG_DSN"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=60.0, help="runs a minute")
    parser.add_argument("--tenant-clients", type=int, default=5)
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--warmup", type=float, default=None, help="seconds")
    parser.add_argument("--rss-bound-mib", type=float, default=32.0)
    parser.add_argument("--fd-bound", type=int, default=16)
    parser.add_argument("--conn-bound", type=int, default=3)
    args = parser.parse_args(argv)
    load = os.getloadavg()
    print(f"machine: {machine()}; load average {load[0]:.2f} at the start")
    tally = Tally()
    with bench_server(args.dsn) as (dsn, server):
        print(f"server: {server}")
        database = f"dvt_soak_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        home = Path(f"/tmp/dvt-bench-soak-{uuid.uuid4().hex[:8]}")
        receiver = _receiver(tally)
        try:
            url = _url(dsn, database)
            made = subprocess.run(
                [sys.executable, "-m", "dvt_cli", "keys", "create", "--tenant", "soak",
                 "--role", "runner", "--role", "reader", "--role", "admin", "--store", url,
                 "--json"], env={**os.environ, "DVT_HOME": str(home)}, cwd=REPO,
                capture_output=True, text=True, check=True)
            key = json.loads(made.stdout)["key"]
            with _serve(url, home) as (process, base):
                samples = asyncio.run(soak(
                    args, base, key, process.pid, dsn, database,
                    f"http://127.0.0.1:{receiver.server_address[1]}/soak", tally))
        finally:
            receiver.shutdown()
            receiver.server_close()
            shutil.rmtree(home, ignore_errors=True)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                    sql.Identifier(database)))
    failed = report(args, samples, tally)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} at the end")
    if failed:
        print("SOAK FAILED: " + "; ".join(failed), file=sys.stderr)
        raise SystemExit(1)
    print("soak passed")


if __name__ == "__main__":
    main()
