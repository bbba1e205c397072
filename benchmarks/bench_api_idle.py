"""Quiet when idle: how many transactions an idle `dvt serve` sends to PostgreSQL.

A `dvt serve` process runs on a database of its own; with no run in flight, the benchmark
reads ``pg_stat_database.xact_commit + xact_rollback`` of that database (from a connection to
another database, so the measurement does not count itself) before and after ``--seconds`` of
idleness, first with no client, then with tenant-stream clients connected. Every statement the
service sends outside an explicit transaction is one transaction, so the delta bounds its
queries from below and its round trips exactly.

Run: ``python benchmarks/bench_api_idle.py`` (a durable local server is started; ``--dsn`` to
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

from benchmarks.bench_store import bench_server

REPO = Path(__file__).resolve().parents[1]


def _transactions(admin_dsn: str, database: str) -> int:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        # Backends flush their counters when idle; ask for the latest snapshot every time.
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database"
                           " WHERE datname = %s", (database,)).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def _serve(store_url: str, home: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = {**os.environ, "DVT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("DVT_STORE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "dvt_cli", "serve", "--port", "0", "--store", store_url,
         "--engine", "reference"], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
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
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="the store's follower fallback poll (URL option poll_interval)")
    args = parser.parse_args(argv)
    with bench_server(args.dsn) as (dsn, server):
        database = f"dvt_idle_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        rows = []
        home = Path(f"/tmp/dvt-bench-idle-{uuid.uuid4().hex[:8]}")
        url = _url(dsn, database)
        if args.poll_interval is not None:
            url += f"?poll_interval={args.poll_interval}"
        with _serve(url, home) as (base, env):
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
                time.sleep(args.seconds)  # the measurement window itself
                after = _transactions(dsn, database)
                stop.set()
                rows.append((label, args.seconds, after - before))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                sql.Identifier(database)))
    print(f"server: {server}")
    print("| scenario | window (s) | transactions | per second |\n|---|---|---|---|")
    for label, seconds, count in rows:
        print(f"| {label} | {seconds:.0f} | {count} | {count / seconds:.2f} |")


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
