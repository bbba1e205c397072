"""Waiting on a run's snapshot: condition-based, bounded, never a blind sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from dvt_engine.errors import RunNotFound
from dvt_engine.models.events import TERMINAL_RUN_EVENTS, Event
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore


async def wait_for_snapshot(
    store: RunStateStore,
    tenant_id: str,
    run_id: str,
    predicate: Callable[[RunSnapshot], bool],
    *,
    timeout: float | None = 60.0,
    wake: Callable[[Event], bool] | None = None,
) -> RunSnapshot:
    """Return the first snapshot of the run that satisfies ``predicate``.

    Follows the run's log and re-reads the snapshot after every new event (only after those
    ``wake`` accepts, when given: the events that can make ``predicate`` true); raises
    TimeoutError after ``timeout`` seconds (None: wait as long as it takes) with the last
    snapshot in the message.
    """
    snapshot = await store.get_snapshot(tenant_id, run_id)
    if snapshot is None:
        raise RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})
    if predicate(snapshot):
        return snapshot
    last = snapshot

    async def follow() -> RunSnapshot:
        nonlocal last
        async for event in store.follow(tenant_id, run_id, after_seq=last.last_event_seq):
            if wake is not None and not wake(event):
                continue
            current = await store.get_snapshot(tenant_id, run_id)
            if current is not None:
                last = current
                if predicate(current):
                    return current
        raise RuntimeError("follow ended")  # pragma: no cover - follow never ends by itself

    try:
        async with asyncio.timeout(timeout):
            return await follow()
    except TimeoutError:
        raise TimeoutError(
            f"run {run_id} did not reach the expected state within {timeout}s; "
            f"last status {last.status} at seq {last.last_event_seq}"
        ) from None


async def wait_for_terminal(
    store: RunStateStore, tenant_id: str, run_id: str, *, timeout: float | None = 120.0
) -> RunSnapshot:
    """Wait until the run is COMPLETED, FAILED or CANCELLED."""
    # Only a terminal run event ends a run: reading the snapshot after every other event cost a
    # waiting caller a third of a noop step's CPU on PostgreSQL.
    return await wait_for_snapshot(
        store, tenant_id, run_id, lambda s: s.status.is_terminal, timeout=timeout,
        wake=lambda e: e.event_type in TERMINAL_RUN_EVENTS,
    )


async def settles_within(waiting: Awaitable[object], seconds: float | None) -> bool:
    """True when ``waiting`` finishes within ``seconds``; False when the time runs out first.

    Loops that wait on an event between rounds use this, not ``asyncio.wait_for``: on Python
    3.11 ``wait_for`` swallows a cancellation that arrives just as the awaited event is set, and
    a loop stopped by cancelling it then runs on forever (its ``stop()`` never returns).
    """
    try:
        async with asyncio.timeout(seconds):
            await waiting
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a background task and return once it has ended.

    The task's own cancellation is the expected outcome and is dropped; an error it ended with
    is raised. A cancellation of the caller while it waits still reaches the caller, which
    ``suppress(CancelledError)`` around ``await task`` would swallow.
    """
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.result()
