"""Fault tests on a real Conductor server: a worker process killed mid-run (the step's next
attempt runs on another worker), the server restarted mid-run on the same SQLite file (also while
a step finishes during the outage).

They assert the mechanism (the run resumes and completes, no event lost or duplicated, each task
attempt accounted for), never how fast: recovery times depend on the machine's load and are
measured by benchmarks/bench_conductor.py. The timeouts below only stop a hung test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from conductor_helpers import TEST_LEASE_S, make_engine

from dvt_adapters_conductor.api import ConductorApi
from dvt_engine.models.events import Event
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import ConductorRunRef, RunContext, RunStatus
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


#: Hang guard of a run that must recover: far above a lease (6 s in tests) plus the lease
#: watcher's period, yet below the 60 to 120 s the server's own sweeper would take (a test
#: that only passed through the sweeper would show up as slow, not as wrong).
HANG_GUARD_S = 240.0


def spawn(procs: list[subprocess.Popen[bytes]], store_url: str, server_url: str,
          prefix: str, lease_check_s: float = 1.0,
          log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start one worker process serving the task types of ``prefix`` (its stderr to ``log``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with contextlib.ExitStack() as files:
        stderr = files.enter_context(log.open("wb")) if log is not None else None
        proc = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT), store_url, server_url, prefix,
             str(TEST_LEASE_S), str(lease_check_s)],
            env=env, stdin=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
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


async def outlived_a_lease(server_url: str, workflow_id: str, timeout: float = 60) -> None:
    """Wait until the workflow's first step task has had its lease extended past one lease."""
    api = ConductorApi(server_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            workflow = await api.run(api.get_workflow, workflow_id)
            task = next((t for t in workflow["tasks"] if t["referenceTaskName"] == "s0"), {})
            if task.get("status") == "IN_PROGRESS" and int(task.get("updateTime") or 0) \
                    - int(task.get("startTime") or 0) >= TEST_LEASE_S * 1000:
                return
            await asyncio.sleep(0.2)
    finally:
        api.close()
    raise AssertionError(f"the step of workflow {workflow_id} never outlived a lease")


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
            snap = await wait_for_terminal(pg_store, TENANT, ctx.run_id, timeout=HANG_GUARD_S)
    finally:
        await engine.close()
    assert snap.status == RunStatus.COMPLETED
    events = await pg_store.fetch_events(TENANT, ctx.run_id)
    assert_exactly_once(events, steps)
    slow_done = next(e for e in events if e.event_type == "StepCompleted" and e.step_id == "slow")
    assert slow_done.engine_attempt_id >= 2  # the lost attempt was redelivered to the new worker


async def test_worker_loss_is_recovered_by_the_lease_watcher(
    conductor_url: str, pg_store: PostgresRunStateStore, pg_url: str, tmp_path: Path
) -> None:
    """SIGKILL the worker mid-step and start a new one at once: the new worker's lease watcher
    takes the lost task for lost (not the server's own sweeper), the step's next engine attempt
    runs to the end, and the run completes exactly once."""
    prefix = f"f{uuid.uuid4().hex[:10]}"
    engine = make_engine(conductor_url, pg_store, worker=False, task_prefix=prefix)
    ref = await put_plan(pg_store, [
        {"stepId": "slow", "kind": "sleep", "params": {"ms": 10000}},
        {"stepId": "after", "kind": "noop", "dependsOn": ["slow"]},
    ])
    ctx = new_context()
    log = tmp_path / "second-worker.log"
    try:
        with worker_processes() as procs:
            first = spawn(procs, pg_url, conductor_url, prefix)
            run_ref = await engine.start_run(ref, ctx)
            assert isinstance(run_ref, ConductorRunRef)
            await wait_for_snapshot(pg_store, TENANT, ctx.run_id, started("slow"), timeout=60)
            # Past its first lease the server has looked at the workflow once already, and
            # (on its SQL queues) looks again only 60 to 120 s later: the case users hit.
            await outlived_a_lease(conductor_url, run_ref.workflow_id)
            first.send_signal(signal.SIGKILL)
            killed_at_ms = time.time() * 1000
            first.wait(timeout=30)
            spawn(procs, pg_url, conductor_url, prefix, log=log)
            snap = await wait_for_terminal(pg_store, TENANT, ctx.run_id, timeout=HANG_GUARD_S)
    finally:
        await engine.close()
    assert snap.status == RunStatus.COMPLETED
    events = await pg_store.fetch_events(TENANT, ctx.run_id)
    assert_exactly_once(events, ["slow", "after"])
    api = ConductorApi(conductor_url)
    try:
        workflow = api.get_workflow(run_ref.workflow_id)
    finally:
        api.close()
    attempts = sorted((t for t in workflow["tasks"] if t["referenceTaskName"] == "s0"),
                      key=lambda t: int(t["retryCount"]))
    # The attempt the killed worker held timed out; the next one started after the kill and
    # ran to the end on the new worker.
    assert [t["status"] for t in attempts] == ["TIMED_OUT", "COMPLETED"], attempts
    assert int(attempts[1]["startTime"]) > killed_at_ms - 1000, (attempts, killed_at_ms)
    assert attempts[1]["workerId"] != attempts[0]["workerId"], attempts
    # The new worker's lease watcher decided the workflow of exactly that lost task.
    lost = f"lease of task {attempts[0]['taskId']} ran out; deciding workflow " \
           f"{run_ref.workflow_id}"
    assert lost in log.read_text(errors="replace"), log.read_text(errors="replace")
    slow_done = next(e for e in events if e.event_type == "StepCompleted" and e.step_id == "slow")
    assert slow_done.engine_attempt_id == 2


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
        snap = await wait_for_terminal(store, TENANT, ctx.run_id, timeout=HANG_GUARD_S)
    finally:
        await engine.close()
    assert snap.status == RunStatus.COMPLETED
    assert_exactly_once(await store.fetch_events(TENANT, ctx.run_id), steps)


async def test_step_finishing_while_the_server_is_away_is_reported_when_it_returns(
    conductor_server: ConductorServer,
) -> None:
    """The server dies mid-step and the step finishes while it is away: the worker keeps its
    report (and the reconcile that opens the next gate) until the server is back; the run
    completes, the step ran once and its task was reported once (no redelivered attempt)."""
    store = MemoryRunStateStore()
    engine = make_engine(conductor_server.api_url, store)
    steps = ["slow", "side", "joined"]
    try:
        ref = await put_plan(store, [
            {"stepId": "slow", "kind": "sleep", "params": {"ms": 1500}},
            {"stepId": "side", "kind": "echo", "params": {"x": 1}},
            # two dependencies: this step has a gate, which only a reconcile opens
            {"stepId": "joined", "kind": "noop", "dependsOn": ["slow", "side"]},
        ])
        ctx = new_context()
        await engine.start_run(ref, ctx)
        await wait_for_snapshot(store, TENANT, ctx.run_id,
                                lambda s: s.step("slow").status == "RUNNING"
                                and s.step("side").status == "SUCCESS", timeout=60)
        conductor_server.kill()
        # The step ends and is written to the log while no server answers.
        await wait_for_snapshot(store, TENANT, ctx.run_id,
                                lambda s: s.step("slow").status == "SUCCESS", timeout=30)
        conductor_server.start()
        snap = await wait_for_terminal(store, TENANT, ctx.run_id, timeout=HANG_GUARD_S)
        workflow_id = snap.engine_run_ref["workflowId"] if snap.engine_run_ref else None
        assert workflow_id
        api = ConductorApi(conductor_server.api_url)
        try:
            workflow = await api.run(api.get_workflow, str(workflow_id))
        finally:
            api.close()
    finally:
        await engine.close()
    assert snap.status == RunStatus.COMPLETED
    events = await store.fetch_events(TENANT, ctx.run_id)
    assert_exactly_once(events, steps)
    slow_done = next(e for e in events if e.event_type == "StepCompleted" and e.step_id == "slow")
    assert slow_done.engine_attempt_id == 1  # the attempt that ran during the outage, not redone
    # The server took one COMPLETED report of the step's task (the one kept through the
    # outage, or the report of a redelivery that found the step recorded: never both), and
    # the joined step's gate was opened once.
    completed = Counter(t["referenceTaskName"] for t in workflow["tasks"]
                        if t["status"] == "COMPLETED")
    assert completed["s0"] == 1, completed
    assert completed["g2"] == 1, completed

