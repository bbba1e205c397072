"""Long timers on the time-skipping test server: hours pass without waiting for them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from temporal_helpers import TENANT, new_context, plan_doc, put_plan
from temporalio.testing import WorkflowEnvironment

from dvt_adapters_temporal.engine import TemporalEngine
from dvt_engine.models.run import RunStatus, TemporalRunRef
from dvt_engine.stores.memory import MemoryRunStateStore

HOUR_MS = 3_600_000


@pytest_asyncio.fixture(loop_scope="session")
async def ts_engine(time_skipping: WorkflowEnvironment) -> AsyncIterator[TemporalEngine]:
    """An engine with in-process workers on the time-skipping server."""
    engine = TemporalEngine(
        MemoryRunStateStore(),
        address=time_skipping.client.service_client.config.target_host,
        task_queue=f"ts-{uuid.uuid4().hex[:8]}",
    )
    try:
        yield engine
    finally:
        await engine.close()


async def run_to_end(env: WorkflowEnvironment, engine: TemporalEngine,
                     doc: dict[str, Any]) -> tuple[Any, str]:
    """Start a plan and wait for its workflow through the env's client, which skips time."""
    ref = await put_plan(engine.store, doc)
    ctx = new_context()
    run_ref = await engine.start_run(ref, ctx)
    assert isinstance(run_ref, TemporalRunRef)
    # Time skips only while skipping is unlocked: the server jumps over every timer.
    async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
        result = await env.client.get_workflow_handle(run_ref.workflow_id).result()
    return result, ctx.run_id


async def test_gate_timeout_of_an_hour(time_skipping: WorkflowEnvironment,
                                       ts_engine: TemporalEngine) -> None:
    result, run_id = await run_to_end(time_skipping, ts_engine, plan_doc([
        {"stepId": "signoff", "kind": "approval", "timeoutMs": HOUR_MS},
        {"stepId": "publish", "kind": "noop", "dependsOn": ["signoff"]},
    ]))
    assert result["status"] == "FAILED"
    snap = await ts_engine.store.project(TENANT, run_id)
    assert snap.status == RunStatus.FAILED
    assert snap.step("signoff").error is not None
    assert snap.step("signoff").error.code == "APPROVAL_TIMEOUT"
    assert str(snap.step("publish").status) == "PENDING"


async def test_default_operator_timeout_of_a_day(time_skipping: WorkflowEnvironment,
                                                 ts_engine: TemporalEngine) -> None:
    result, run_id = await run_to_end(time_skipping, ts_engine, plan_doc(
        [{"stepId": "broken", "kind": "fail", "params": {"code": "BROKEN", "retryable": False}},
         {"stepId": "other", "kind": "noop"}],
        failurePolicy="awaitOperator",
    ))
    assert result["status"] == "FAILED"
    assert result["failure_code"] == "OPERATOR_TIMEOUT"
    snap = await ts_engine.store.project(TENANT, run_id)
    assert snap.failure is not None
    assert snap.failure.code == "OPERATOR_TIMEOUT"
    assert str(snap.step("other").status) == "SUCCESS"  # independent branches kept running


async def test_engine_retry_backoff_of_half_an_hour(time_skipping: WorkflowEnvironment,
                                                   ts_engine: TemporalEngine) -> None:
    result, run_id = await run_to_end(time_skipping, ts_engine, plan_doc([
        {"stepId": "flaky", "kind": "fail", "params": {"failTimes": 1, "code": "FLAKY"},
         "retry": {"maxAttempts": 2, "initialIntervalMs": HOUR_MS // 2,
                   "maxIntervalMs": HOUR_MS}},
    ]))
    assert result["status"] == "COMPLETED"
    events = await ts_engine.store.fetch_events(TENANT, run_id)
    flaky = [e for e in events if e.step_id == "flaky"]
    assert [e.event_type for e in flaky] == ["StepStarted", "StepCompleted"]
    assert flaky[-1].engine_attempt_id == 2
