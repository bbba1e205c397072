"""Helpers for Temporal tests: plans into the registry, runs, and waiting on the store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from typing import Any

from dvt_engine.models.events import Event
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunContext
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore
from dvt_engine.waiting import wait_for_terminal

TENANT = "tenant-a"


def plan_doc(steps: list[dict[str, Any]], **metadata: Any) -> dict[str, Any]:
    """A plan document with test metadata."""
    meta = {"planId": "temporal-test", "planVersion": "1.0.0", "schemaVersion": "v1.2"}
    meta.update(metadata)
    return {"metadata": meta, "steps": steps}


async def put_plan(store: RunStateStore, doc: dict[str, Any]) -> PlanRef:
    """Store a plan in the registry and return its reference."""
    data = json.dumps(doc, sort_keys=True).encode()
    uri = await store.put_plan(data)
    meta = doc["metadata"]
    return PlanRef(
        uri=uri, sha256=hashlib.sha256(data).hexdigest(), schema_version=meta["schemaVersion"],
        plan_id=meta["planId"], plan_version=meta["planVersion"], size_bytes=len(data),
    )


def new_context(**extra: Any) -> RunContext:
    """A fresh run context of the test tenant."""
    run_id = str(uuid.uuid4())
    values: dict[str, Any] = {
        "tenant_id": TENANT, "project_id": "proj", "environment_id": "dev",
        "run_id": run_id, "run_request_id": f"req-{run_id}",
    }
    values.update(extra)
    return RunContext(**values)


async def wait_for(
    store: RunStateStore, run_id: str, predicate: Any, *, within_s: float = 60.0,
    what: str = "condition",
) -> RunSnapshot:
    """Poll the store until predicate(snapshot, events) holds; fail after a bounded time."""
    deadline = time.monotonic() + within_s
    while True:
        snap = await store.get_snapshot(TENANT, run_id)
        assert snap is not None
        events = await store.fetch_events(TENANT, run_id)
        if predicate(snap, events):
            return snap
        if time.monotonic() > deadline:
            kinds = [(e.event_type, e.step_id, e.engine_attempt_id, e.payload) for e in events]
            raise AssertionError(f"{what} not reached within {within_s}s; log: {kinds}")
        await asyncio.sleep(0.05)


async def wait_terminal(store: RunStateStore, run_id: str, within_s: float = 60.0) -> RunSnapshot:
    """Wait until the run is COMPLETED, FAILED or CANCELLED (following the log, no polling)."""
    try:
        return await wait_for_terminal(store, TENANT, run_id, timeout=within_s)
    except TimeoutError as exc:
        kinds = [(e.event_type, e.step_id) for e in await store.fetch_events(TENANT, run_id)]
        raise AssertionError(f"{exc}; log: {kinds[-20:]}") from None


def has_event(event_type: str, step_id: str | None = None) -> Any:
    """Predicate: the log holds an event of this type (and step)."""

    def check(_snap: RunSnapshot, events: list[Event]) -> bool:
        return any(e.event_type == event_type and (step_id is None or e.step_id == step_id)
                   for e in events)

    return check


def kinds(events: list[Event]) -> list[tuple[str, str | None]]:
    """(eventType, stepId) of each event, in runSeq order."""
    return [(e.event_type, e.step_id) for e in events]
