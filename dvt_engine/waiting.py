"""Waiting on a run's snapshot: condition-based, bounded, never a blind sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dvt_engine.errors import RunNotFound
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore


async def wait_for_snapshot(
    store: RunStateStore,
    tenant_id: str,
    run_id: str,
    predicate: Callable[[RunSnapshot], bool],
    *,
    timeout: float | None = 60.0,
) -> RunSnapshot:
    """Return the first snapshot of the run that satisfies ``predicate``.

    Follows the run's log and re-reads the snapshot after every new event; raises
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
        async for _event in store.follow(tenant_id, run_id, after_seq=last.last_event_seq):
            current = await store.get_snapshot(tenant_id, run_id)
            if current is not None:
                last = current
                if predicate(current):
                    return current
        raise RuntimeError("follow ended")  # pragma: no cover - follow never ends by itself

    try:
        return await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        raise TimeoutError(
            f"run {run_id} did not reach the expected state within {timeout}s; "
            f"last status {last.status} at seq {last.last_event_seq}"
        ) from None


async def wait_for_terminal(
    store: RunStateStore, tenant_id: str, run_id: str, *, timeout: float | None = 120.0
) -> RunSnapshot:
    """Wait until the run is COMPLETED, FAILED or CANCELLED."""
    return await wait_for_snapshot(
        store, tenant_id, run_id, lambda s: s.status.is_terminal, timeout=timeout
    )
