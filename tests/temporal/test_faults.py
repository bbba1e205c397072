"""Fault tests on real servers: a worker process killed mid-run, a dev server restarted mid-run."""

from __future__ import annotations

import contextlib
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
from temporal_helpers import (
    TENANT,
    has_event,
    new_context,
    plan_doc,
    put_plan,
    wait_for,
    wait_terminal,
)
from temporalio.testing import WorkflowEnvironment

from dvt_adapters_temporal.engine import TemporalEngine
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunStatus
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_local import temporal as devserver
from dvt_statestore_pg.store import PostgresRunStateStore

WORKER_SCRIPT = Path(__file__).with_name("worker_process.py")
ROOT = Path(__file__).resolve().parents[2]


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
def worker_processes(
    store_url: str, address: str, queue: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start worker processes on demand (append via spawn); every one is killed afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


def spawn(procs: list[subprocess.Popen[bytes]], store_url: str, address: str,
          queue: str) -> subprocess.Popen[bytes]:
    """Start one worker process serving `queue`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(WORKER_SCRIPT), store_url, address, queue],
        env=env, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    procs.append(proc)
    return proc


def assert_exactly_once(events: list[Event], steps: list[str]) -> None:
    """No duplicated and no missing event: each step started and completed exactly once."""
    counts = Counter((e.event_type, e.step_id, e.logical_attempt_id) for e in events)
    assert all(n == 1 for n in counts.values()), counts
    for step in steps:
        assert counts[("StepStarted", step, 1)] == 1
        assert counts[("StepCompleted", step, 1)] == 1
    assert counts[("RunStarted", None, 1)] == 1
    assert counts[("RunCompleted", None, 1)] == 1
    assert [e.run_seq for e in events] == sorted(e.run_seq for e in events)


async def test_killed_worker_process_is_replaced_without_losing_or_duplicating_events(
    temporal_env: WorkflowEnvironment, pg_store: PostgresRunStateStore, pg_url: str
) -> None:
    address = temporal_env.client.service_client.config.target_host
    queue = f"faults-{uuid.uuid4().hex[:8]}"
    engine = TemporalEngine(pg_store, worker=False, address=address, task_queue=queue,
                            heartbeat_timeout_s=2.0)
    steps = ["slow", "after", "last"]
    ref = await put_plan(pg_store, plan_doc([
        {"stepId": "slow", "kind": "sleep", "params": {"ms": 3000}},
        {"stepId": "after", "kind": "noop", "dependsOn": ["slow"]},
        {"stepId": "last", "kind": "echo", "dependsOn": ["after"], "params": {"ok": True}},
    ]))
    ctx = new_context()
    with worker_processes(pg_url, address, queue) as procs:
        first = spawn(procs, pg_url, address, queue)
        await engine.start_run(ref, ctx)
        await wait_for(pg_store, ctx.run_id, has_event("StepStarted", "slow"), within_s=60,
                       what="the first worker starting the slow step")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        spawn(procs, pg_url, address, queue)
        # The contract: the run finishes within 30 s of the new worker starting.
        snap = await wait_terminal(pg_store, ctx.run_id, within_s=30)
    assert snap.status == RunStatus.COMPLETED
    events = await pg_store.fetch_events(TENANT, ctx.run_id)
    assert_exactly_once(events, steps)
    slow_done = next(e for e in events if e.event_type == "StepCompleted" and e.step_id == "slow")
    assert slow_done.engine_attempt_id >= 2  # the lost attempt was retried by the new worker
    await engine.close()


async def test_dev_server_restart_mid_run_resumes(tmp_path: Path) -> None:
    state = tmp_path / "temporal"
    info = devserver.start_dev_server(state)
    port = int(info.address.rsplit(":", 1)[1])
    store = MemoryRunStateStore()
    engine = TemporalEngine(store, address=info.address,
                            task_queue=f"restart-{uuid.uuid4().hex[:8]}", heartbeat_timeout_s=2.0)
    try:
        ref = await put_plan(store, plan_doc([
            {"stepId": "slow", "kind": "sleep", "params": {"ms": 1500}},
            {"stepId": "after", "kind": "noop", "dependsOn": ["slow"]},
        ]))
        ctx = new_context()
        await engine.start_run(ref, ctx)
        await wait_for(store, ctx.run_id, has_event("StepStarted", "slow"), within_s=60)
        assert devserver.stop_dev_server(state)
        restarted = devserver.start_dev_server(state, port=port)
        assert restarted.pid != info.pid
        snap = await wait_terminal(store, ctx.run_id, within_s=120)
        assert snap.status == RunStatus.COMPLETED
        assert_exactly_once(await store.fetch_events(TENANT, ctx.run_id), ["slow", "after"])
    finally:
        await engine.close()
        devserver.stop_dev_server(state)
