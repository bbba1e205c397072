"""The driver of `--engine temporal-bare`: the bare workflow started at the rate, each end
learnt from its result, each history checked after the drain.

The schedule, the in-flight-starts bound, the samplers and the drain are the dvt mode's
(driver.load_and_drain). What differs is where an end is seen: the dvt mode timestamps a run's
RunCompleted as it arrives on the store's tenant stream (written by the workflow's last
bookkeeping activity, before the workflow itself closes); here there is no store, so a run
ends when its handle's ``result()`` returns, a long poll on the workflow's close event. That
includes the workflow's closing task, so it measures a little more of the server's path than
the dvt mode does, never less. The waits have a connection of their own: as many long polls as
runs in flight must not queue the starts behind them (the dvt driver's Temporal connection
carries starts only).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from benchmarks.load.bare_temporal import WORKFLOW_NAME
from benchmarks.load.driver import START_RETRY_S, LoadState, load_and_drain
from benchmarks.load.options import LoadOptions
from benchmarks.load.servers import Servers
from benchmarks.load.verify import Verdict
from dvt_adapters_temporal.search_attributes import ownership_attributes

#: History reads in flight while checking.
CHECK_CONCURRENCY = 8
#: Each of these exactly once in a bare run's history: one start, one activity, one close.
ONCE = ("EVENT_TYPE_WORKFLOW_EXECUTION_STARTED", "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED",
        "EVENT_TYPE_ACTIVITY_TASK_COMPLETED", "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED")


def _dvt_attributes(workflow_id: str) -> dict[str, Any]:
    """The search attributes and memo dvt's start gives a run (``--with-dvt-attributes``)."""
    return {"search_attributes": ownership_attributes("load", "load", "load"),
            "memo": {"runId": workflow_id, "tenantId": "load"}}


async def _start(client: Client, task_queue: str, workflow_id: str, state: LoadState,
                 gate: asyncio.Semaphore, *, dvt_attributes: bool = False
                 ) -> WorkflowHandle[None, None] | None:
    """Start one bare workflow as the dvt engine starts its own; None if it never started."""
    extra = _dvt_attributes(workflow_id) if dvt_attributes else {}
    async with gate:
        state.started[workflow_id] = state.now()
        while True:
            try:
                # The dvt engine's start options (dvt_adapters_temporal.engine.launch); its
                # search attributes and memo only with --with-dvt-attributes.
                return await client.start_workflow(
                    WORKFLOW_NAME, id=workflow_id, task_queue=task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    request_eager_start=True, result_type=type(None), **extra)
            except WorkflowAlreadyStartedError:
                return client.get_workflow_handle(workflow_id, result_type=type(None))
            except RPCError:
                # As the dvt mode: a start is retried on its id for a while, then given up
                # (the run stays "not ended" and fails the check after the drain).
                state.start_errors += 1
                if state.now() - state.started[workflow_id] > START_RETRY_S:
                    return None
                await asyncio.sleep(0.5)  # back-off while the server comes back


async def _end(handle: WorkflowHandle[None, None], state: LoadState) -> None:
    """Record the run's end when its result comes back (the long poll re-asked after errors)."""
    while True:
        try:
            await handle.result()
            status = "RunCompleted"
        except WorkflowFailureError:
            status = "RunFailed"
        except RPCError:
            state.stream_restarts += 1
            await asyncio.sleep(0.5)  # back-off before asking again
            continue
        break
    state.ended[handle.id] = state.now()
    state.status[handle.id] = status
    async with state.ends:
        state.ends.notify_all()


async def drive_bare(options: LoadOptions, servers: Servers) -> tuple[LoadState, Client]:
    """Run the bare load phase and the drain; the state and the client (for the check)."""
    client = await Client.connect(servers.temporal_address)
    results = await Client.connect(servers.temporal_address)
    state = LoadState()
    waiting: set[asyncio.Task[None]] = set()

    async def launch(workflow_id: str, gate: asyncio.Semaphore) -> None:
        started = await _start(client, servers.task_queue, workflow_id, state, gate,
                               dvt_attributes=options.dvt_attributes)
        if started is not None:
            handle = results.get_workflow_handle(workflow_id, run_id=started.result_run_id,
                                                 result_type=type(None))
            task = asyncio.create_task(_end(handle, state))
            waiting.add(task)
            task.add_done_callback(waiting.discard)

    try:
        await load_and_drain(options, servers, state, asyncio.Event(), launch)
    finally:
        for task in list(waiting):
            task.cancel()
        for task in list(waiting):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return state, client


def history_problems(workflow_id: str, event_types: list[str]) -> list[str]:
    """What is wrong with one bare run's history (event type names, in order)."""
    counts = Counter(event_types)
    return [f"{workflow_id}: {kind.removeprefix('EVENT_TYPE_')} {counts[kind]} times"
            for kind in ONCE if counts[kind] != 1]


async def verify_bare(client: Client, workflow_ids: list[str]) -> Verdict:
    """Each run's history: started, its activity scheduled and completed, closed completed,
    each exactly once (the run id is never reused, so one history per id)."""
    verdict = Verdict()
    gate = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def check(workflow_id: str) -> None:
        async with gate:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
        verdict.problems += history_problems(
            workflow_id, [EventType.Name(e.event_type) for e in history.events])
        verdict.checked += 1

    await asyncio.gather(*(check(w) for w in workflow_ids))
    return verdict
