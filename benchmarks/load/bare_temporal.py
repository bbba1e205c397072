"""A bare temporalio workflow (one no-op activity) and its worker host: `--engine temporal-bare`.

The same dev server and load as `--engine temporal`, without dvt or PostgreSQL: what is left of a
run's latency is the Temporal server's and the SDK's. Its worker is hosted the way `dvt worker`
hosts dvt's (its own process, the same sandbox runner, the same worker options), so the two
modes differ only in the workflow the server carries.

This module is the workflow's module: the sandbox re-imports it for every workflow run, so its
top level imports only the standard library and temporalio (both passed through); the worker
host imports the rest when it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

WORKFLOW_NAME = "BareLoadWorkflow"
ACTIVITY_NAME = "bare_noop"
#: What the worker prints once it polls, the line the harness waits for.
READY = "bare worker:"
#: The dvt step activity's shape on the load harness (dvt_adapters_temporal.workflow runs a
#: step with a heartbeat timeout, `DVT_TEMPORAL_HEARTBEAT_TIMEOUT_S=2` in the harness): the
#: server keeps the same timers for it.
HEARTBEAT_TIMEOUT = timedelta(seconds=2)
START_TO_CLOSE = timedelta(seconds=60)


@activity.defn(name=ACTIVITY_NAME)
async def bare_noop() -> None:
    """Does nothing: the server's and the SDK's cost of one activity, alone."""


@workflow.defn(name=WORKFLOW_NAME, sandboxed=True)
class BareLoadWorkflow:
    """One no-op activity, then the workflow completes."""

    @workflow.run
    async def run(self) -> None:
        """Run the activity once."""
        await workflow.execute_activity(
            bare_noop, start_to_close_timeout=START_TO_CLOSE, heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=3))


async def serve(address: str, task_queue: str) -> None:
    """Poll ``task_queue`` at ``address`` until SIGTERM/SIGINT, then drain and return."""
    from temporalio.client import Client
    from temporalio.worker import Worker

    # The sandbox runner and options of dvt's own worker (dvt_adapters_temporal.worker), so the
    # per-run sandbox cost and the polling are the same as in the dvt mode.
    from dvt_adapters_temporal.worker import serve as serve_workers
    from dvt_adapters_temporal.worker import workflow_runner

    client = await Client.connect(address)
    worker = Worker(
        client, task_queue=task_queue, workflows=[BareLoadWorkflow], activities=[bare_noop],
        workflow_runner=workflow_runner(),
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=3),
        max_cached_workflows=1000, max_concurrent_activities=100,
        graceful_shutdown_timeout=timedelta(seconds=30),
        max_heartbeat_throttle_interval=timedelta(milliseconds=100),
        default_heartbeat_throttle_interval=timedelta(milliseconds=100))
    print(f"{READY} {address} queue {task_queue}", flush=True)
    await serve_workers([worker])


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.load.bare_temporal --address HOST:PORT --task-queue Q`."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.load.bare_temporal",
                                description="Host the bare load workflow's worker.")
    p.add_argument("--address", required=True)
    p.add_argument("--task-queue", required=True)
    a = p.parse_args(argv)
    asyncio.run(serve(a.address, a.task_queue))
    return 0


if __name__ == "__main__":
    # Run under its importable name: the sandbox imports the workflow's module by that name,
    # and ``__main__`` is not one it can import again.
    from benchmarks.load.bare_temporal import main as _main

    sys.exit(_main())
