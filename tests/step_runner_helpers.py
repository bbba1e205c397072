"""Building step-runner test runs: plans, started runs, invocations and event checks."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from dvt_engine.eventlog import EventFactory, RunWriter
from dvt_engine.idempotency import run_request_key
from dvt_engine.models.events import Event
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.run import RunContext, RunHeader
from dvt_engine.ports import StepContext
from dvt_engine.steps import (
    HandlerRegistry,
    StepInvocation,
    builtin_registry,
)
from dvt_engine.stores.memory import MemoryRunStateStore

TENANT = "tenant-a"
WAIT_S = 10.0  # upper bound for waiting on a condition; never a synchronisation sleep

Handler = Callable[[StepContext], Awaitable[Any]]


def make_plan(steps: list[dict[str, Any]], params: dict[str, Any] | None = None) -> ExecutionPlan:
    """A plan with the given steps (camelCase, as a person writes them)."""
    return ExecutionPlan.model_validate({
        "metadata": {"planId": "runner-plan", "planVersion": "1.0.0", "schemaVersion": "v1.2"},
        "params": params or {"date": "2026-11-21"},
        "steps": steps,
    })


async def started_run(store: MemoryRunStateStore, plan: ExecutionPlan) -> RunHeader:
    """Register a run of ``plan`` and write RunStarted, so step events are legal."""
    data = plan.model_dump_json(by_alias=True).encode("utf-8")
    uri = await store.put_plan(data)
    ref = PlanRef(uri=uri, sha256=hashlib.sha256(data).hexdigest(), schema_version="v1.2",
                  plan_id=plan.metadata.plan_id, plan_version=plan.metadata.plan_version)
    run_id = str(uuid.uuid4())
    context = RunContext(tenant_id=TENANT, project_id="proj", environment_id="dev",
                         run_id=run_id, run_request_id=run_id)
    header = RunHeader.for_plan(
        plan=plan, plan_ref=ref, context=context, engine="reference",
        run_request_key=run_request_key(TENANT, "proj", "dev", plan.metadata.plan_id,
                                        plan.metadata.plan_version, run_id),
        created_at=datetime.now(UTC),
    )
    await store.register_run(header)
    await RunWriter(store, header).append(
        EventFactory(header, emitted_by="engine").run_event("RunStarted", {"engine": "reference"})
    )
    return header


def invocation(
    header: RunHeader, plan: ExecutionPlan, step_id: str, *, engine_attempt: int = 1,
    logical_attempt: int = 1,
) -> StepInvocation:
    return StepInvocation.for_step(header, plan.step(step_id), plan_params=plan.params,
                                   logical_attempt_id=logical_attempt,
                                   engine_attempt_id=engine_attempt)


async def step_events(store: MemoryRunStateStore, header: RunHeader) -> list[Event]:
    return [e for e in await store.fetch_events(TENANT, header.run_id) if e.step_id is not None]


def types_of(events: list[Event]) -> list[str]:
    return [str(e.event_type) for e in events]


async def append_engine_event(
    store: MemoryRunStateStore, header: RunHeader, event_type: str, payload: dict[str, Any],
    step_id: str | None = None,
) -> None:
    factory = EventFactory(header, emitted_by="engine")
    event = (factory.step_event(event_type, step_id, payload) if step_id
             else factory.run_event(event_type, payload))
    await RunWriter(store, header).append(event)


def registry_with(**handlers: Handler) -> HandlerRegistry:
    registry = builtin_registry()
    for kind, fn in handlers.items():
        registry.register(kind.replace("_", "."), fn)
    return registry
