"""The workloads of the Temporal profiles in docs/perf/temporal.md, to run under a profiler.

Run: py-spy record -r 200 -f flamegraph -o out.svg -- python benchmarks/profile_temporal.py
Three 50-step chains, 60 ten-step runs (20 at a time) and a 20-step fan-out on dvt's Temporal
engine, against a dev server without the transfer-queue read cap (see bench_temporal.py).

``--replay-steps N`` profiles the workflow side of a large plan instead: it runs a chain-like
plan of N noop steps, then replays every workflow run of its chain through the SDK's Replayer
under cProfile (each replayed run rebuilds its interpreter from the carried cursor, as a worker
that did not run the previous run does) and prints the slowest runs and the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path


async def workload() -> None:
    """Run the flame-graph workload once and print what it measured."""
    import bench_temporal as bt

    async with bt.dev_server(stock=False) as env:
        bench = bt.DvtBench(env.client.service_client.config.target_host)
        try:
            await bench.run(bt.plan("warm", bt.chain(2)))
            for rep in range(3):
                t0 = time.perf_counter()
                await bench.run(bt.plan(f"seq{rep}", bt.chain(50)))
                print(f"50-step chain: {(time.perf_counter() - t0) / 50 * 1000:.1f} ms/step")
            ten = bt.plan("ten", bt.chain(10))
            wall = await bt.run_concurrent(60, 20, lambda i: bench.run(ten))
            print(f"ten-step runs: {60 / wall * 60:.1f} runs/min")
            t = await bt.timed(lambda: bench.run(bt.plan("par", bt.fan(20))))
            print(f"20-step fan-out: {t * 1000:.1f} ms")
        finally:
            await bench.engine.close()


async def replay_profile(steps: int, top: int) -> None:
    """Run a chain-like plan, then replay each workflow run of its chain under cProfile."""
    import bench_temporal as bt
    from temporalio.client import WorkflowHistory
    from temporalio.worker import Replayer

    from dvt_adapters_temporal.converter import DATA_CONVERTER
    from dvt_adapters_temporal.replay import fetch_chain
    from dvt_adapters_temporal.worker import workflow_runner
    from dvt_adapters_temporal.workflow import DvtRunWorkflow

    async with bt.dev_server(stock=False) as env:
        bench = bt.DvtBench(env.client.service_client.config.target_host)
        try:
            _ctx, ref = await bench.start(bt.plan(f"chain-like-{steps}", bt.chain_like(steps)))
            client = await bench.engine.client()
            await client.get_workflow_handle(ref.workflow_id).result()
            chain = await fetch_chain(client, ref.workflow_id)
        finally:
            await bench.engine.close()
    profile = cProfile.Profile()
    # Workflow activations run on the executor's thread: the profile is enabled there.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, initializer=profile.enable)
    rep = Replayer(workflows=[DvtRunWorkflow], workflow_runner=workflow_runner(),
                   data_converter=DATA_CONVERTER, workflow_task_executor=executor)
    times: list[tuple[float, int]] = []
    for index, run in enumerate(chain["runs"]):
        history = WorkflowHistory.from_json(chain["workflowId"], run)
        t0 = time.process_time()
        result = await rep.replay_workflow(history, raise_on_replay_failure=False)
        times.append((time.process_time() - t0, index))
        assert result.replay_failure is None, result.replay_failure
    total = sum(t for t, _ in times)
    print(f"{steps} steps: {len(times)} workflow runs replayed in {total:.2f} s of CPU "
          f"({total / len(times) * 1000:.1f} ms a run); slowest runs (index, ms): "
          f"{[(i, round(t * 1000, 1)) for t, i in sorted(times, reverse=True)[:5]]}")
    executor.submit(profile.disable).result()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(top)
    print(out.getvalue())


def main() -> None:
    """Parse the options and run one workload."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replay-steps", type=int, default=None,
                        help="profile replaying a chain-like plan of this many steps")
    parser.add_argument("--top", type=int, default=30, help="functions to print")
    args = parser.parse_args()
    if args.replay_steps:
        asyncio.run(replay_profile(args.replay_steps, args.top))
    else:
        asyncio.run(workload())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
    sys.stdout.flush()
    # Skip interpreter teardown: the SDK's native threads can crash Python's finalizer.
    os._exit(0)
