"""The bare temporalio baseline of `bench_temporal.py`: no-op activities, in sequence and all at
once, in a module of its own as a user's workflow file would be.

The workflow sandbox imports a workflow's module afresh for every workflow run; this one
imports only temporalio, so the baseline pays for nothing it does not use.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow


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
