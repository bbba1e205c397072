"""Quiet when idle: how many queries an idle `dvt serve` sends to PostgreSQL.

A `dvt serve` process runs on a database of its own; with no run in flight, the benchmark
reads ``pg_stat_database.xact_commit + xact_rollback`` of that database (from a connection to
another database, so the measurement does not count itself) before and after ``--seconds`` of
idleness, first with no client, then with tenant-stream clients connected. Every statement the
service sends outside an explicit transaction is one transaction; the count also includes the
server's own work in that database (autovacuum). When the server preloads
``pg_stat_statements`` (the one this benchmark starts does), the statements of that database
are counted too, and the most frequent ones listed: that is the service's own traffic.

Run: ``python -m benchmarks.bench_api_idle`` (a durable local server is started; ``--dsn`` to
use another one, whose role may create databases).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from benchmarks.bench_store import BENCH_SETTINGS
from dvt_local.postgres import start_server

REPO = Path(__file__).resolve().parents[1]


def _transactions(admin_dsn: str, database: str) -> int:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        # Backends flush their counters when idle; ask for the latest snapshot every time.
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database"
                           " WHERE datname = %s", (database,)).fetchone()
    return int(row[0]) if row else 0


def _statements(admin_dsn: str, database: str) -> dict[str, int] | None:
    """Calls per statement text in ``database`` (None without pg_stat_statements)."""
    try:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT s.query, s.calls FROM pg_stat_statements s"
                " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
                (database,)).fetchall()
    except psycopg.Error:
        return None
    found: dict[str, int] = {}
    for query, calls in rows:
        text = " ".join(str(query).split())
        found[text] = found.get(text, 0) + int(calls)
    return found


def _delta(before: dict[str, int] | None, after: dict[str, int] | None
           ) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    delta = {q: n - before.get(q, 0) for q, n in after.items()}
    return {q: n for q, n in delta.items() if n > 0}


@contextmanager
def _server(dsn: str | None) -> Iterator[tuple[str, str]]:
    """``--dsn``, or a local server preloading pg_stat_statements."""
    if dsn:
        yield dsn, "external (--dsn)"
        return
    pg = start_server(settings={**BENCH_SETTINGS,
                                "shared_preload_libraries": "pg_stat_statements"})
    try:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield pg.dsn(), (f"PostgreSQL {version[0] if version else '?'} on 127.0.0.1,"
                         " pg_stat_statements preloaded")
    finally:
        pg.destroy()


@contextmanager
def _engine(name: str, home: Path) -> Iterator[list[str]]:
    """The `dvt serve` options of ``name``, its server started for the block (workers in the
    service: Temporal's and Conductor's poll their own server, not PostgreSQL)."""
    if name == "temporal":
        from dvt_local.temporal import start_dev_server, stop_dev_server

        record = start_dev_server(home / "temporal")
        try:
            yield ["--engine", "temporal", "--temporal-address", record.address]
        finally:
            stop_dev_server(home / "temporal")
    elif name == "conductor":
        from dvt_local.conductor import local_server

        with local_server() as conductor:
            yield ["--engine", "conductor", "--conductor-url", conductor.api_url]
    else:
        yield ["--engine", "reference"]


@contextmanager
def _serve(store_url: str, home: Path, engine: list[str]
           ) -> Iterator[tuple[str, dict[str, str]]]:
    env = {**os.environ, "DVT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("DVT_STORE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "dvt_cli", "serve", "--port", "0", "--store", store_url,
         *engine], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    base = None
    for line in process.stderr:
        if "Uvicorn running on" in line:
            base = json.loads(line)["msg"].split("running on ", 1)[1].split()[0]
            break
    if base is None:
        raise SystemExit("dvt serve did not start")
    threading.Thread(target=lambda: [None for _ in process.stderr or ()], daemon=True).start()
    try:
        yield base, env
    finally:
        process.terminate()
        process.wait(timeout=60)


def _hold_stream(base: str, key: str, stop: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=None) as c, \
            c.stream("GET", "/v1/stream") as s:
        for _ in s.iter_lines():  # heartbeats only: nothing runs
            if stop.is_set():
                return


def main(argv: list[str] | None = None) -> None:
    """Measure both scenarios and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dsn", help="an existing server (default: start a local one)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=3, help="tenant-stream clients")
    parser.add_argument("--engine", choices=("reference", "temporal", "conductor"),
                        default="reference", help="served engine (its workers in the service)")
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="the followers' re-read while events are held back (URL option)")
    parser.add_argument("--fallback-interval", type=float, default=None,
                        help="the followers' safety re-read while listening (URL option)")
    args = parser.parse_args(argv)
    breakdown: list[tuple[str, dict[str, int]]] = []
    with _server(args.dsn) as (dsn, server):
        database = f"dvt_idle_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        rows = []
        home = Path(f"/tmp/dvt-bench-idle-{uuid.uuid4().hex[:8]}")
        url = _url(dsn, database)
        options = {name: value for name, value in (
            ("poll_interval", args.poll_interval),
            ("fallback_interval", args.fallback_interval)) if value is not None}
        if options:
            url += "?" + "&".join(f"{name}={value}" for name, value in options.items())
        with _engine(args.engine, home) as engine, \
                _serve(url, home, engine) as (base, env):
            made = subprocess.run([sys.executable, "-m", "dvt_cli", "keys", "create",
                                   "--tenant", "bench", "--role", "runner", "--role", "reader",
                                   "--store", _url(dsn, database), "--json"], env=env,
                                  cwd=REPO, capture_output=True, text=True, check=True)
            key = json.loads(made.stdout)["key"]
            for label, clients in (("idle, no client", 0),
                                   (f"idle, {args.clients} tenant-stream clients",
                                    args.clients)):
                stop = threading.Event()
                holders = [threading.Thread(target=_hold_stream, args=(base, key, stop),
                                            daemon=True) for _ in range(clients)]
                for h in holders:
                    h.start()
                time.sleep(2.0)  # let connections settle before the window opens
                before = _transactions(dsn, database)
                calls_before = _statements(dsn, database)
                time.sleep(args.seconds)  # the measurement window itself
                after = _transactions(dsn, database)
                calls = _delta(calls_before, _statements(dsn, database))
                stop.set()
                statements = None if calls is None else sum(calls.values())
                rows.append((label, args.seconds, after - before, statements))
                if calls:
                    breakdown.append((label, calls))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                sql.Identifier(database)))
    print(f"server: {server}; engine: {args.engine}")
    print("| scenario | window (s) | transactions | per second | statements | per second |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, seconds, count, statements in rows:
        stated = ("- | -" if statements is None
                  else f"{statements} | {statements / seconds:.2f}")
        print(f"| {label} | {seconds:.0f} | {count} | {count / seconds:.2f} | {stated} |")
    for label, calls in breakdown:
        print(f"\n{label}: statements by calls")
        for query, n in sorted(calls.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {n:5d}  {query[:110]}")


def _url(dsn: str, database: str) -> str:
    """A postgresql:// URL of ``dsn`` on another database."""
    parts = conninfo_to_dict(dsn)
    user = parts.get("user", "")
    password = f":{parts['password']}" if parts.get("password") else ""
    auth = f"{user}{password}@" if user else ""
    return (f"postgresql://{auth}{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}"
            f"/{database}")


if __name__ == "__main__":
    main()
