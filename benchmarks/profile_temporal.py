"""The workload of the Temporal flame graphs in docs/perf/temporal.md, to run under a profiler.

Run: py-spy record -r 200 -f flamegraph -o out.svg -- python benchmarks/profile_temporal.py
Three 50-step chains, 60 ten-step runs (20 at a time) and a 20-step fan-out on dvt's Temporal
engine, against a dev server without the transfer-queue read cap (see bench_temporal.py).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path


async def main() -> None:
    """Run the workload once and print what it measured."""
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


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    asyncio.run(main())
    sys.stdout.flush()
    # Skip interpreter teardown: the SDK's native threads can crash Python's finalizer.
    os._exit(0)
