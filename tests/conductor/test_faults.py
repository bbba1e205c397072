"""Fault tests on a real Conductor server: a worker process killed mid-run, the server restarted
mid-run on the same SQLite file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from conductor_helpers import TEST_LEASE_S, make_engine

from dvt_engine.models.events import Event
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunContext, RunStatus
from dvt_engine.ports import RunStateStore
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.waiting import wait_for_snapshot, wait_for_terminal
from dvt_local.conductor import ConductorServer
from dvt_statestore_pg.store import PostgresRunStateStore

WORKER_SCRIPT = Path(__file__).with_name("conductor_worker_process.py")
ROOT = Path(__file__).resolve().parents[2]
TENANT = "acme"


@pytest.fixture
def pg_url(dvt_postgres_store_url: str) -> str:
    """The plugin's store URL on a fresh schema; worker processes open it too."""
    return dvt_postgres_store_url


@pytest_asyncio.fixture(loop_scope="session")
async def pg_store(pg_url: str) -> AsyncIterator[PostgresRunStateStore]:
    """An open PostgreSQL store for the test process."""
    store = await PostgresRunStateStore.open(pg_url)
    try:
        yield store
    finally:
        await store.close()


@contextlib.contextmanager
def worker_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes started by the test; every one is killed afterwards, by PID."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


def spawn(procs: list[subprocess.Popen[bytes]], store_url: str, server_url: str,
          prefix: str) -> subprocess.Popen[bytes]:
    """Start one worker process serving the task types of ``prefix``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(WORKER_SCRIPT), store_url, server_url, prefix, str(TEST_LEASE_S)],
        env=env, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    procs.append(proc)
    return proc


async def put_plan(store: RunStateStore, steps: list[dict[str, object]]) -> PlanRef:
    """Store a plan in the registry and return its reference."""
    doc = {"metadata": {"planId": f"faults-{uuid.uuid4().hex[:6]}", "planVersion": "1.0.0",
                        "schemaVersion": "v1.2"}, "steps": steps}
    data = json.dumps(doc, sort_keys=True).encode()
    uri = await store.put_plan(data)
    return PlanRef(uri=uri, sha256=hashlib.sha256(data).hexdigest(), schema_version="v1.2",
                   plan_id=doc["metadata"]["planId"], plan_version="1.0.0",  # type: ignore[index]
                   size_bytes=len(data))


def new_context() -> RunContext:
    """A fresh run of the test tenant."""
    run_id = f"fault-{uuid.uuid4().hex[:10]}"
    return RunContext(tenant_id=TENANT, project_id="p", environment_id="e", run_id=run_id,
                      run_request_id=f"req-{run_id}")


def assert_exactly_once(events: list[Event], steps: list[str]) -> None:
    """No duplicated and no missing event: each step started and completed exactly once."""
    counts = Counter((e.event_type, e.step_id, e.logical_attempt_id) for e in events)
    assert all(n == 1 for n in counts.values()), counts
    for step in steps:
        assert counts[("StepStarted", step, 1)] == 1, step
        assert counts[("StepCompleted", step, 1)] == 1, step
    assert counts[("RunStarted", None, 1)] == 1
    assert counts[("RunCompleted", None, 1)] == 1
    assert [e.run_seq for e in events] == sorted(e.run_seq for e in events)


def started(step_id: str):  # type: ignore[no-untyped-def]
    """Predicate on a snapshot: the step is running."""
    return lambda s: s.step(step_id).status in ("RUNNING", "SUCCESS")


async def test_killed_worker_process_is_replaced_without_losing_or_duplicating_events(
    conductor_url: str, pg_store: PostgresRunStateStore, pg_url: str
) -> None:
    """SIGKILL the worker that runs a step; a new worker finishes the run exactly once."""
    prefix = f"f{uuid.uuid4().hex[:10]}"
    engine = make_engine(conductor_url, pg_store, worker=False, task_prefix=prefix)
    steps = ["slow", "after", "side", "last"]
    ref = await put_plan(pg_store, [
        {"stepId": "slow", "kind": "sleep", "params": {"ms": 3000}},
        {"stepId": "side", "kind": "echo", "params": {"x": 1}},
        {"stepId": "after", "kind": "noop", "dependsOn": ["slow"]},
        {"stepId": "last", "kind": "echo", "dependsOn": ["after", "side"], "params": {"ok": 1}},
    ])
    ctx = new_context()
    try:
        with worker_processes() as procs:
            first = spawn(procs, pg_url, conductor_url, prefix)
            await engine.start_run(ref, ctx)
            await wait_for_snapshot(pg_store, TENANT, ctx.run_id, started("slow"), timeout=60)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            spawn(procs, pg_url, conductor_url, prefix)
            snap = await wait_for_terminal(pg_store, TENANT, ctx.run_id, timeout=90)
    finally:
        await engine.close()
    assert snap.status == RunStatus.COMPLETED
    events = await pg_store.fetch_events(TENANT, ctx.run_id)
    assert_exactly_once(events, steps)
    slow_done = next(e for e in events if e.event_type == "StepCompleted" and e.step_id == "slow")
    assert slow_done.engine_attempt_id >= 2  # the lost attempt was redelivered to the new worker


async def test_server_restart_mid_run_resumes(conductor_server: ConductorServer) -> None:
    """Kill the server while a step runs, start it again on the same SQLite file: the run
    completes with every event exactly once."""
    store = MemoryRunStateStore()
    engine = make_engine(conductor_server.api_url, store)
    steps = ["slow", "after", "last"]
    try:
        ref = await put_plan(store, [
            {"stepId": "slow", "kind": "sleep", "params": {"ms": 2000}},
            {"stepId": "after", "kind": "noop", "dependsOn": ["slow"]},
            {"stepId": "last", "kind": "echo", "dependsOn": ["after"], "params": {"ok": 1}},
        ])
        ctx = new_context()
        await engine.start_run(ref, ctx)
        await wait_for_snapshot(store, TENANT, ctx.run_id, started("slow"), timeout=60)
        pid, port, db = conductor_server.pid, conductor_server.port, conductor_server.db_path
        # A crash, not a polite stop: SIGKILL, then start again on the same port and file.
        conductor_server.kill()
        conductor_server.start()
        assert conductor_server.pid != pid
        assert (conductor_server.port, conductor_server.db_path) == (port, db)
        snap = await wait_for_terminal(store, TENANT, ctx.run_id, timeout=180)
    finally:
        await engine.close()
    assert snap.status == RunStatus.COMPLETED
    assert_exactly_once(await store.fetch_events(TENANT, ctx.run_id), steps)

