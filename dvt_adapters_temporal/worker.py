"""Worker host: the interpreter workflow and the step activities, with graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from dvt_adapters_temporal.activities import TemporalActivities
from dvt_adapters_temporal.workflow import DvtRunWorkflow

# Pure dvt code and pydantic are imported once, outside the sandbox: they are deterministic and
# reloading them per workflow run would cost time and memory for nothing.
# The workflow module itself stays sandboxed; it passes its own pure imports through.
# cel (plan v1.3 conditions) is pure and deterministic: no clock, no I/O, no randomness.
PASSTHROUGH_MODULES: tuple[str, ...] = ("dvt_engine", "pydantic", "pydantic_core",
                                        "annotated_types", "typing_inspection", "cel")


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox runner dvt's workflow uses (also used by the Replayer)."""
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH_MODULES)
    )


def activity_worker_options(
    activities: TemporalActivities,
    max_concurrent_activities: int = 100,
    graceful_shutdown_s: float = 30.0,
) -> dict[str, Any]:
    """Worker options for step activities."""
    return {
        "activities": activities.all(),
        "max_concurrent_activities": max_concurrent_activities,
        "graceful_shutdown_timeout": timedelta(seconds=graceful_shutdown_s),
        # Cancellation reaches an activity only with a heartbeat's answer; the activity decides
        # how often it beats (fast while a step is young), so the SDK must not hold beats back.
        "max_heartbeat_throttle_interval": timedelta(milliseconds=100),
        "default_heartbeat_throttle_interval": timedelta(milliseconds=100),
    }


def build_workers(
    client: Client,
    activities: TemporalActivities,
    *,
    task_queue: str,
    activity_queues: Sequence[str] = (),
    run_workflows: bool = True,
    max_concurrent_activities: int = 100,
    graceful_shutdown_s: float = 30.0,
    max_cached_workflows: int = 1000,
) -> list[Worker]:
    """Workers for the main queue (workflow + activities) and each routed step queue."""
    workers: list[Worker] = []
    common = activity_worker_options(activities, max_concurrent_activities, graceful_shutdown_s)
    workers.append(
        Worker(
            client,
            task_queue=task_queue,
            workflows=[DvtRunWorkflow] if run_workflows else [],
            workflow_runner=workflow_runner(),
            # A lost worker's sticky queue times out fast so another worker picks the run up.
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=3),
            max_cached_workflows=max_cached_workflows,
            **common,
        )
    )
    for queue in dict.fromkeys(activity_queues):
        if queue != task_queue:
            workers.append(Worker(client, task_queue=queue, **common))
    return workers


@contextlib.asynccontextmanager
async def running_workers(workers: Sequence[Worker]) -> AsyncIterator[None]:
    """Run workers for the duration of the block; shut them down gracefully after."""
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield
    finally:
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)


async def serve(workers: Sequence[Worker], *, stop: asyncio.Event | None = None) -> None:
    """Run workers until SIGINT/SIGTERM (or `stop`), then drain running activities and exit."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with running_workers(workers):
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def select_workers(
    client: Client,
    activities: TemporalActivities,
    *,
    main_queue: str,
    kind_queues: Sequence[str],
    queues: Sequence[str] | None,
    workflows: bool,
    max_cached_workflows: int = 1000,
) -> list[Worker]:
    """The workers a host runs: everything by default, or only the named step queues."""
    if not queues:
        return build_workers(client, activities, task_queue=main_queue, run_workflows=workflows,
                             activity_queues=kind_queues,
                             max_cached_workflows=max_cached_workflows)
    selected = list(dict.fromkeys(queues))
    pool: list[Worker] = []
    if main_queue in selected:
        pool += build_workers(client, activities, task_queue=main_queue, run_workflows=workflows,
                              max_cached_workflows=max_cached_workflows)
        selected.remove(main_queue)
    pool += [Worker(client, task_queue=q, **activity_worker_options(activities))
             for q in selected]
    return pool
