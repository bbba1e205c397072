"""The step runner: events per outcome, engine retries, timeouts, cancellation, gates, secrets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from dvt_engine.errors import SecretNotFound, StepCancelled
from dvt_engine.eventlog import EventFactory, RunWriter
from dvt_engine.idempotency import run_request_key
from dvt_engine.models.events import Event
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.run import RunContext, RunHeader, RunStatus, StepStatus, StepSubstatus
from dvt_engine.models.snapshot import ArtifactRef
from dvt_engine.ports import StepContext, StepResult
from dvt_engine.secrets import MappingSecretsProvider
from dvt_engine.steps import (
    MAX_OUTPUT_BYTES,
    CancelToken,
    HandlerFailure,
    HandlerRegistry,
    RunnerStepContext,
    StepInvocation,
    StepOutcome,
    StepRunner,
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


@pytest.fixture
async def store() -> MemoryRunStateStore:
    return MemoryRunStateStore()


def registry_with(**handlers: Handler) -> HandlerRegistry:
    registry = builtin_registry()
    for kind, fn in handlers.items():
        registry.register(kind.replace("_", "."), fn)
    return registry


# --- success --------------------------------------------------------------------------------------


async def test_noop_writes_started_and_completed(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "a", "kind": "noop"}])
    header = await started_run(store, plan)
    outcome = await StepRunner(store).run(invocation(header, plan, "a"))
    assert outcome.status == "succeeded"
    assert outcome.final is True
    assert outcome.duplicate is False
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepCompleted"]
    assert events[0].payload == {"kind": "noop"}
    assert events[0].emitted_by == "step-runner"
    assert outcome.run_seq == events[1].run_seq
    snap = await store.get_snapshot(TENANT, header.run_id)
    assert snap is not None
    assert snap.step("a").status == StepStatus.SUCCESS


async def test_echo_outputs_params_and_cost_hint(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "e", "kind": "echo", "params": {"select": "orders", "n": 3},
                       "costHint": {"units": 2.5}}])
    header = await started_run(store, plan)
    outcome = await StepRunner(store).run(invocation(header, plan, "e"))
    assert outcome.output == {"select": "orders", "n": 3}
    completed = (await step_events(store, header))[-1]
    assert completed.event_type == "StepCompleted"
    assert completed.payload["output"] == {"select": "orders", "n": 3}
    assert completed.payload["artifacts"] == []
    assert completed.payload["cost"]["units"] == 2.5
    assert isinstance(completed.payload["cost"]["durationMs"], int)
    snap = await store.project(TENANT, header.run_id)
    assert snap.step("e").output == {"select": "orders", "n": 3}
    assert snap.cost.units == 2.5


async def test_handler_result_artifacts_and_cost_units(store: MemoryRunStateStore) -> None:
    async def produce(ctx: StepContext) -> StepResult:
        return StepResult(
            output={"rows": 10},
            artifacts=[ArtifactRef(uri="s3://b/k1", kind="parquet", size_bytes=5),
                       {"uri": "s3://b/k2", "kind": "csv", "sha256": "ab" * 32}],
            cost_units=7.0,
        )

    plan = make_plan([{"stepId": "p", "kind": "produce", "costHint": {"units": 1}}])
    header = await started_run(store, plan)
    outcome = await StepRunner(store, registry_with(produce=produce)).run(
        invocation(header, plan, "p"))
    assert outcome.status == "succeeded"
    assert [a.uri for a in outcome.artifacts] == ["s3://b/k1", "s3://b/k2"]
    payload = (await step_events(store, header))[-1].payload
    assert payload["artifacts"] == [
        {"uri": "s3://b/k1", "kind": "parquet", "sizeBytes": 5},
        {"uri": "s3://b/k2", "kind": "csv", "sha256": "ab" * 32},
    ]
    assert payload["cost"]["units"] == 7.0
    snap = await store.get_snapshot(TENANT, header.run_id)
    assert snap is not None
    assert [a.kind for a in snap.artifacts] == ["parquet", "csv"]


async def test_function_handler_may_return_dict_or_none(store: MemoryRunStateStore) -> None:
    async def as_dict(ctx: StepContext) -> dict[str, Any]:
        return {"ok": True}

    async def as_none(ctx: StepContext) -> None:
        return None

    plan = make_plan([{"stepId": "d", "kind": "as.dict"}, {"stepId": "n", "kind": "as.none"}])
    header = await started_run(store, plan)
    runner = StepRunner(store, registry_with(as_dict=as_dict, as_none=as_none))
    assert (await runner.run(invocation(header, plan, "d"))).output == {"ok": True}
    assert (await runner.run(invocation(header, plan, "n"))).output is None


async def test_context_carries_identity_attempts_and_params(store: MemoryRunStateStore) -> None:
    seen: dict[str, Any] = {}

    async def look(ctx: StepContext) -> None:
        seen.update(
            tenant=ctx.tenant_id, project=ctx.project_id, env=ctx.environment_id,
            run=ctx.run_id, plan=ctx.plan_id, version=ctx.plan_version, step=ctx.step_id,
            kind=ctx.kind, params=dict(ctx.params), plan_params=dict(ctx.plan_params),
            logical=ctx.logical_attempt_id, engine=ctx.engine_attempt_id,
            max_attempts=ctx.max_attempts, cancelled=ctx.cancelled,
        )

    plan = make_plan([{"stepId": "l", "kind": "look", "params": {"x": 1},
                       "retry": {"maxAttempts": 4}}], params={"date": "d1"})
    header = await started_run(store, plan)
    await StepRunner(store, registry_with(look=look)).run(
        invocation(header, plan, "l", engine_attempt=2))
    assert seen == {
        "tenant": TENANT, "project": "proj", "env": "dev", "run": header.run_id,
        "plan": "runner-plan", "version": "1.0.0", "step": "l", "kind": "look",
        "params": {"x": 1}, "plan_params": {"date": "d1"}, "logical": 1, "engine": 2,
        "max_attempts": 4, "cancelled": False,
    }


# --- failures and engine retries ------------------------------------------------------------------


async def test_flaky_step_has_exactly_started_and_completed(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "f", "kind": "fail", "params": {"failTimes": 2},
                       "retry": {"maxAttempts": 3, "initialIntervalMs": 100,
                                 "backoffCoefficient": 3.0, "maxIntervalMs": 1000}}])
    header = await started_run(store, plan)
    runner = StepRunner(store)
    first = await runner.run(invocation(header, plan, "f", engine_attempt=1))
    second = await runner.run(invocation(header, plan, "f", engine_attempt=2))
    third = await runner.run(invocation(header, plan, "f", engine_attempt=3))
    assert (first.status, first.final, first.retry_delay_ms) == ("retry", False, 100)
    assert (second.status, second.final, second.retry_delay_ms) == ("retry", False, 300)
    assert first.error is not None
    assert first.error.code == "STEP_FAILED"
    assert first.error.retryable is True
    assert (third.status, third.final) == ("succeeded", True)
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepCompleted"]
    assert events[0].engine_attempt_id == 1
    assert events[1].engine_attempt_id == 3
    snap = await store.project(TENANT, header.run_id)
    assert snap == await store.get_snapshot(TENANT, header.run_id)
    assert snap.step("f").status == StepStatus.SUCCESS
    assert snap.step("f").logical_attempt_id == 1


async def test_final_failure_on_last_engine_attempt(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "f", "kind": "fail",
                       "params": {"code": "WAREHOUSE_DOWN", "message": "down"},
                       "retry": {"maxAttempts": 2, "initialIntervalMs": 5}}])
    header = await started_run(store, plan)
    runner = StepRunner(store)
    first = await runner.run(invocation(header, plan, "f", engine_attempt=1))
    assert first.status == "retry"
    assert types_of(await step_events(store, header)) == ["StepStarted"]
    last = await runner.run(invocation(header, plan, "f", engine_attempt=2))
    assert (last.status, last.final, last.retry_delay_ms) == ("failed", True, None)
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepFailed"]
    assert events[1].payload == {
        "error": {"code": "WAREHOUSE_DOWN", "message": "down", "retryable": True}}
    assert events[1].engine_attempt_id == 2
    snap = await store.get_snapshot(TENANT, header.run_id)
    assert snap is not None
    assert snap.step("f").status == StepStatus.FAILED
    error = snap.step("f").error
    assert error is not None
    assert error.code == "WAREHOUSE_DOWN"


async def test_non_retryable_error_code_stops_engine_retries(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "f", "kind": "fail", "params": {"code": "BAD_SQL"},
                       "retry": {"maxAttempts": 5, "nonRetryableErrorCodes": ["BAD_SQL"]}}])
    header = await started_run(store, plan)
    outcome = await StepRunner(store).run(invocation(header, plan, "f"))
    assert (outcome.status, outcome.final) == ("failed", True)
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.retryable) == ("BAD_SQL", False)
    events = await step_events(store, header)
    assert events[-1].payload["error"]["retryable"] is False


async def test_error_raised_not_retryable_stops_engine_retries(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "f", "kind": "fail", "params": {"retryable": False},
                       "retry": {"maxAttempts": 5}}])
    header = await started_run(store, plan)
    outcome = await StepRunner(store).run(invocation(header, plan, "f"))
    assert (outcome.status, outcome.final) == ("failed", True)
    assert outcome.error is not None
    assert outcome.error.code == "STEP_FAILED"


async def test_fail_without_fail_times_always_fails(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "f", "kind": "fail", "retry": {"maxAttempts": 3}}])
    header = await started_run(store, plan)
    runner = StepRunner(store)
    statuses = [(await runner.run(invocation(header, plan, "f", engine_attempt=n))).status
                for n in (1, 2, 3)]
    assert statuses == ["retry", "retry", "failed"]


async def test_error_classification(store: MemoryRunStateStore) -> None:
    async def coded(ctx: StepContext) -> None:
        raise SecretNotFound("no such secret")

    async def plain(ctx: StepContext) -> None:
        raise ValueError("boom")

    async def host(ctx: StepContext) -> None:
        raise HandlerFailure("QUOTA", "over quota", retryable=False)

    plan = make_plan([{"stepId": s, "kind": s, "retry": {"maxAttempts": 3}}
                      for s in ("coded", "plain", "host")])
    header = await started_run(store, plan)
    runner = StepRunner(store, registry_with(coded=coded, plain=plain, host=host))
    coded_out = await runner.run(invocation(header, plan, "coded"))
    plain_out = await runner.run(invocation(header, plan, "plain"))
    host_out = await runner.run(invocation(header, plan, "host"))
    assert coded_out.error is not None
    assert plain_out.error is not None
    assert host_out.error is not None
    assert (coded_out.status, coded_out.error.code, coded_out.error.retryable) == (
        "failed", "SECRET_NOT_FOUND", False)
    assert (plain_out.status, plain_out.error.code, plain_out.error.retryable) == (
        "retry", "STEP_FAILED", True)
    assert plain_out.error.message == "ValueError: boom"
    assert (host_out.status, host_out.error.code) == ("failed", "QUOTA")


async def test_unknown_kind_fails_with_step_kind_unknown(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "x", "kind": "dbt.run", "retry": {"maxAttempts": 3}}])
    header = await started_run(store, plan)
    outcome = await StepRunner(store).run(invocation(header, plan, "x"))
    assert (outcome.status, outcome.final) == ("failed", True)
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.retryable) == ("STEP_KIND_UNKNOWN", False)
    assert types_of(await step_events(store, header)) == ["StepStarted", "StepFailed"]


# --- timeouts, output limits ----------------------------------------------------------------------


async def test_timeout_is_retryable_and_stops_the_handler(store: MemoryRunStateStore) -> None:
    stopped = asyncio.Event()

    async def hang(ctx: StepContext) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    plan = make_plan([{"stepId": "h", "kind": "hang", "timeoutMs": 20,
                       "retry": {"maxAttempts": 2, "initialIntervalMs": 7}}])
    header = await started_run(store, plan)
    runner = StepRunner(store, registry_with(hang=hang))
    first = await runner.run(invocation(header, plan, "h", engine_attempt=1))
    assert stopped.is_set()
    assert first.status == "retry"
    assert first.retry_delay_ms == 7
    assert first.error is not None
    assert (first.error.code, first.error.retryable) == ("STEP_TIMEOUT", True)
    last = await runner.run(invocation(header, plan, "h", engine_attempt=2))
    assert (last.status, last.final) == ("failed", True)
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepFailed"]
    assert events[-1].payload["error"]["code"] == "STEP_TIMEOUT"


async def test_output_over_32_kib_is_refused_not_retryable(store: MemoryRunStateStore) -> None:
    big = "x" * (MAX_OUTPUT_BYTES + 1)
    plan = make_plan([{"stepId": "e", "kind": "echo", "params": {"blob": big},
                       "retry": {"maxAttempts": 3}}])
    header = await started_run(store, plan)
    outcome = await StepRunner(store).run(invocation(header, plan, "e"))
    assert (outcome.status, outcome.final) == ("failed", True)
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.retryable) == ("STEP_OUTPUT_TOO_LARGE", False)
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepFailed"]
    assert big not in json.dumps(events[-1].payload)


async def test_output_at_the_limit_is_accepted(store: MemoryRunStateStore) -> None:
    # {"blob":"..."} is 11 bytes of JSON around the string.
    plan = make_plan([{"stepId": "e", "kind": "echo",
                       "params": {"blob": "y" * (MAX_OUTPUT_BYTES - 11)}}])
    header = await started_run(store, plan)
    outcome = await StepRunner(store).run(invocation(header, plan, "e"))
    assert outcome.status == "succeeded"


async def test_output_that_is_not_json_fails(store: MemoryRunStateStore) -> None:
    async def weird(ctx: StepContext) -> StepResult:
        return StepResult(output={"when": object()})

    async def bad_artifact(ctx: StepContext) -> StepResult:
        return StepResult(artifacts=[{"kind": "csv"}])

    plan = make_plan([{"stepId": "w", "kind": "weird", "retry": {"maxAttempts": 2}},
                      {"stepId": "b", "kind": "bad.artifact", "retry": {"maxAttempts": 2}}])
    header = await started_run(store, plan)
    runner = StepRunner(store, registry_with(weird=weird, bad_artifact=bad_artifact))
    for step_id in ("w", "b"):
        outcome = await runner.run(invocation(header, plan, step_id))
        assert (outcome.status, outcome.final) == ("failed", True), step_id
        assert outcome.error is not None
        assert outcome.error.code == "STEP_FAILED"


# --- cancellation ---------------------------------------------------------------------------------


async def test_cancel_token_stops_handler_and_writes_step_cancelled(
    store: MemoryRunStateStore,
) -> None:
    entered = asyncio.Event()
    unwound = asyncio.Event()

    async def wait_forever(ctx: StepContext) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            unwound.set()

    plan = make_plan([{"stepId": "w", "kind": "wait", "retry": {"maxAttempts": 3}}])
    header = await started_run(store, plan)
    token = CancelToken()
    task = asyncio.create_task(
        StepRunner(store, registry_with(wait=wait_forever)).run(invocation(header, plan, "w"),
                                                               token))
    await asyncio.wait_for(entered.wait(), WAIT_S)
    token.cancel("operator asked")
    outcome = await asyncio.wait_for(task, WAIT_S)
    assert unwound.is_set()
    assert (outcome.status, outcome.final) == ("cancelled", True)
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.retryable) == ("STEP_CANCELLED", False)
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepFailed"]
    assert events[-1].payload["error"]["code"] == "STEP_CANCELLED"
    assert "operator asked" in events[-1].payload["error"]["message"]


async def test_sleep_builtin_is_cancellable(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "s", "kind": "sleep", "params": {"ms": 3_600_000}}])
    header = await started_run(store, plan)
    token = CancelToken()
    task = asyncio.create_task(StepRunner(store).run(invocation(header, plan, "s"), token))

    async def step_started() -> None:
        async for event in store.follow(TENANT, header.run_id):
            if event.event_type == "StepStarted":
                return

    await asyncio.wait_for(step_started(), WAIT_S)
    token.cancel()
    outcome = await asyncio.wait_for(task, WAIT_S)
    assert outcome.status == "cancelled"
    assert types_of(await step_events(store, header)) == ["StepStarted", "StepFailed"]


async def test_cancel_reason_is_recorded_once(store: MemoryRunStateStore) -> None:
    entered = asyncio.Event()

    async def nap(ctx: StepContext) -> None:
        entered.set()
        await ctx.sleep(3600)

    async def gives_up(ctx: StepContext) -> None:
        raise StepCancelled("upstream went away")

    plan = make_plan([{"stepId": "n", "kind": "nap"}, {"stepId": "g", "kind": "gives.up"}])
    header = await started_run(store, plan)
    runner = StepRunner(store, registry_with(nap=nap, gives_up=gives_up))
    token = CancelToken()
    task = asyncio.create_task(runner.run(invocation(header, plan, "n"), token))
    await asyncio.wait_for(entered.wait(), WAIT_S)
    token.cancel("pause")
    napped = await asyncio.wait_for(task, WAIT_S)
    gave_up = await runner.run(invocation(header, plan, "g"))
    assert napped.error is not None
    assert napped.error.message == "step was cancelled: pause"
    assert gave_up.status == "cancelled"
    assert gave_up.error is not None
    assert gave_up.error.message == "step was cancelled: upstream went away"


async def test_handler_ignoring_cancellation_is_abandoned_after_grace(
    store: MemoryRunStateStore,
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    finished = asyncio.Event()

    async def stubborn(ctx: StepContext) -> None:
        entered.set()
        try:
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # deliberately ignores being asked to stop
        finally:
            finished.set()

    plan = make_plan([{"stepId": "s", "kind": "stubborn"}])
    header = await started_run(store, plan)
    runner = StepRunner(store, registry_with(stubborn=stubborn), stop_grace_s=0.01)
    token = CancelToken()
    task = asyncio.create_task(runner.run(invocation(header, plan, "s"), token))
    await asyncio.wait_for(entered.wait(), WAIT_S)
    token.cancel("stop")
    outcome = await asyncio.wait_for(task, WAIT_S)
    assert outcome.status == "cancelled"
    assert not finished.is_set()
    release.set()
    await asyncio.wait_for(finished.wait(), WAIT_S)
    assert types_of(await step_events(store, header)) == ["StepStarted", "StepFailed"]


async def test_token_cancelled_before_run_never_calls_handler(store: MemoryRunStateStore) -> None:
    calls: list[int] = []

    async def count(ctx: StepContext) -> None:
        calls.append(1)

    plan = make_plan([{"stepId": "c", "kind": "count"}])
    header = await started_run(store, plan)
    token = CancelToken()
    token.cancel()
    outcome = await StepRunner(store, registry_with(count=count)).run(
        invocation(header, plan, "c"), token)
    assert outcome.status == "cancelled"
    assert calls == []


async def test_task_cancellation_writes_step_cancelled_and_propagates(
    store: MemoryRunStateStore,
) -> None:
    entered = asyncio.Event()

    async def wait_forever(ctx: StepContext) -> None:
        entered.set()
        await asyncio.Event().wait()

    plan = make_plan([{"stepId": "w", "kind": "wait"}])
    header = await started_run(store, plan)
    task = asyncio.create_task(
        StepRunner(store, registry_with(wait=wait_forever)).run(invocation(header, plan, "w")))
    await asyncio.wait_for(entered.wait(), WAIT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepFailed"]
    assert events[-1].payload["error"] == {
        "code": "STEP_CANCELLED", "message": "step was cancelled: the step's task was cancelled",
        "retryable": False}


async def test_cancel_token_from_another_thread(store: MemoryRunStateStore) -> None:
    token = CancelToken()
    waiter = asyncio.create_task(token.wait())
    # Whether the waiter registers before or after the thread cancels, it must wake up.
    await asyncio.get_running_loop().run_in_executor(None, token.cancel, "from a thread")
    await asyncio.wait_for(waiter, WAIT_S)
    assert token.cancelled
    assert token.reason == "from a thread"
    await asyncio.wait_for(token.wait(), WAIT_S)  # an already-cancelled token returns at once


# --- refusal and redelivery -----------------------------------------------------------------------


async def test_skipped_step_is_refused_without_running(store: MemoryRunStateStore) -> None:
    calls: list[int] = []

    async def count(ctx: StepContext) -> None:
        calls.append(1)

    plan = make_plan([{"stepId": "c", "kind": "count"}])
    header = await started_run(store, plan)
    await append_engine_event(store, header, "StepSkipped", {"reason": "operator"}, "c")
    outcome = await StepRunner(store, registry_with(count=count)).run(
        invocation(header, plan, "c"))
    assert (outcome.status, outcome.final) == ("refused", True)
    assert outcome.error is not None
    assert outcome.error.code == "ILLEGAL_TRANSITION"
    assert calls == []
    assert types_of(await step_events(store, header)) == ["StepSkipped"]


async def test_ended_run_refuses_step(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "n", "kind": "noop"}])
    header = await started_run(store, plan)
    await append_engine_event(store, header, "RunCancelled", {"reason": "stop"})
    outcome = await StepRunner(store).run(invocation(header, plan, "n"))
    assert outcome.status == "refused"
    assert await step_events(store, header) == []


async def test_redelivered_attempt_returns_recorded_outcome(store: MemoryRunStateStore) -> None:
    calls: list[int] = []

    async def count(ctx: StepContext) -> dict[str, int]:
        calls.append(ctx.engine_attempt_id)
        return {"n": len(calls)}

    plan = make_plan([{"stepId": "c", "kind": "count", "retry": {"maxAttempts": 3}}])
    header = await started_run(store, plan)
    runner = StepRunner(store, registry_with(count=count))
    first = await runner.run(invocation(header, plan, "c", engine_attempt=1))
    again = await runner.run(invocation(header, plan, "c", engine_attempt=2))
    assert calls == [1]
    assert (again.status, again.final, again.duplicate) == ("succeeded", True, True)
    assert again.output == first.output == {"n": 1}
    assert again.run_seq == first.run_seq
    assert types_of(await step_events(store, header)) == ["StepStarted", "StepCompleted"]


async def test_redelivered_failed_attempt_returns_recorded_failure(
    store: MemoryRunStateStore,
) -> None:
    plan = make_plan([{"stepId": "f", "kind": "fail", "params": {"retryable": False}}])
    header = await started_run(store, plan)
    runner = StepRunner(store)
    await runner.run(invocation(header, plan, "f"))
    again = await runner.run(invocation(header, plan, "f", engine_attempt=2))
    assert (again.status, again.duplicate) == ("failed", True)
    assert again.error is not None
    assert again.error.code == "STEP_FAILED"
    assert types_of(await step_events(store, header)) == ["StepStarted", "StepFailed"]


async def test_retry_step_runs_a_new_logical_attempt(store: MemoryRunStateStore) -> None:
    async def second_time_lucky(ctx: StepContext) -> dict[str, int]:
        if ctx.logical_attempt_id == 1:
            raise HandlerFailure("BROKEN", "first logical attempt fails", retryable=False)
        return {"attempt": ctx.logical_attempt_id}

    plan = make_plan([{"stepId": "s", "kind": "lucky"}])
    header = await started_run(store, plan)
    runner = StepRunner(store, registry_with(lucky=second_time_lucky))
    first = await runner.run(invocation(header, plan, "s"))
    assert first.status == "failed"
    factory = EventFactory(header, emitted_by="operator")
    await RunWriter(store, header).append(factory.signal_event(
        "SignalAccepted", "a" * 64,
        {"signalId": "sig-r", "signalType": "RETRY_STEP", "stepId": "s",
         "actor": {"id": "eve", "roles": ["engineer"]}, "effectiveRole": "engineer"},
    ))
    # A stale redelivery of attempt 1 changes nothing; attempt 2 runs.
    stale = await runner.run(invocation(header, plan, "s", engine_attempt=2))
    assert (stale.status, stale.duplicate, stale.logical_attempt_id) == ("failed", True, 1)
    second = await runner.run(invocation(header, plan, "s", logical_attempt=2))
    assert (second.status, second.output) == ("succeeded", {"attempt": 2})
    events = await step_events(store, header)
    assert [(e.event_type, e.logical_attempt_id) for e in events] == [
        ("StepStarted", 1), ("StepFailed", 1), ("StepStarted", 2), ("StepCompleted", 2)]
    snap = await store.get_snapshot(TENANT, header.run_id)
    assert snap is not None
    assert [(a.logical_attempt_id, a.status) for a in snap.step("s").attempts] == [
        (1, StepStatus.FAILED), (2, StepStatus.SUCCESS)]


async def test_paused_run_still_records_a_running_step(store: MemoryRunStateStore) -> None:
    plan2 = make_plan([{"stepId": "e", "kind": "echo", "params": {"v": 1}}])
    header2 = await started_run(store, plan2)
    await append_engine_event(store, header2, "RunPaused", {"ordinal": 1})
    # A step already handed to a worker when the pause took effect is recorded (contract §6.4).
    outcome = await StepRunner(store).run(invocation(header2, plan2, "e"))
    assert outcome.status == "succeeded"
    snap = await store.get_snapshot(TENANT, header2.run_id)
    assert snap is not None
    assert snap.status == RunStatus.PAUSED


# --- approval gates -------------------------------------------------------------------------------


async def _open_gate(store: MemoryRunStateStore, timeout_ms: int | None = 60_000) -> tuple[
        StepRunner, StepInvocation, RunHeader]:
    spec: dict[str, Any] = {"stepId": "g", "kind": "approval"}
    if timeout_ms is not None:
        spec["timeoutMs"] = timeout_ms
    plan = make_plan([spec])
    header = await started_run(store, plan)
    runner = StepRunner(store)
    inv = invocation(header, plan, "g")
    outcome = await runner.run(inv)
    assert (outcome.status, outcome.final) == ("awaiting_approval", False)
    return runner, inv, header


async def test_gate_opens_and_waits(store: MemoryRunStateStore) -> None:
    _, _, header = await _open_gate(store)
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepAwaitingApproval"]
    assert events[1].payload == {"timeoutMs": 60_000}
    snap = await store.get_snapshot(TENANT, header.run_id)
    assert snap is not None
    assert snap.step("g").status == StepStatus.RUNNING
    assert snap.step("g").substatus == StepSubstatus.AWAITING_APPROVAL


async def test_gate_reopened_by_engine_retry_is_a_duplicate(store: MemoryRunStateStore) -> None:
    runner, inv, header = await _open_gate(store, timeout_ms=None)
    again = await runner.run(inv.with_engine_attempt(2))
    assert (again.status, again.duplicate) == ("awaiting_approval", True)
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepAwaitingApproval"]
    assert events[1].payload == {"timeoutMs": None}


async def test_gate_approved(store: MemoryRunStateStore) -> None:
    runner, inv, header = await _open_gate(store)
    outcome = await runner.complete_gate(inv, approve=True, approver="ana", comment="ok",
                                         signal_id="sig-1")
    assert (outcome.status, outcome.final) == ("succeeded", True)
    assert outcome.output == {"approver": "ana", "comment": "ok", "decision": "approve"}
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepAwaitingApproval", "StepCompleted"]
    assert events[-1].caused_by_signal_id == "sig-1"
    assert events[-1].payload["output"] == {"approver": "ana", "comment": "ok",
                                            "decision": "approve"}
    repeat = await runner.complete_gate(inv, approve=True, approver="ana", comment="ok",
                                        signal_id="sig-1")
    assert (repeat.status, repeat.duplicate) == ("succeeded", True)
    assert len(await step_events(store, header)) == 3


async def test_gate_rejected(store: MemoryRunStateStore) -> None:
    runner, inv, header = await _open_gate(store)
    outcome = await runner.complete_gate(inv, approve=False, approver="bo", comment="not today",
                                         signal_id="sig-2")
    assert (outcome.status, outcome.final) == ("failed", True)
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.retryable) == ("APPROVAL_REJECTED", False)
    last = (await step_events(store, header))[-1]
    assert last.event_type == "StepFailed"
    assert last.payload["error"]["code"] == "APPROVAL_REJECTED"
    assert last.payload["error"]["retryable"] is False
    assert last.caused_by_signal_id == "sig-2"


async def test_gate_expired_then_late_approval_is_refused(store: MemoryRunStateStore) -> None:
    runner, inv, header = await _open_gate(store)
    expired = await runner.expire_gate(inv)
    assert expired.error is not None
    assert expired.error.code == "APPROVAL_TIMEOUT"
    assert "60000 ms" in expired.error.message
    late = await runner.complete_gate(inv, approve=True, approver="ana", comment=None,
                                      signal_id="sig-late")
    # The log already decided this attempt: the approval is refused and nothing is added.
    assert late.status == "refused"
    assert late.error is not None
    assert late.error.code == "ILLEGAL_TRANSITION"
    events = await step_events(store, header)
    assert types_of(events) == ["StepStarted", "StepAwaitingApproval", "StepFailed"]
    assert events[-1].payload["error"]["code"] == "APPROVAL_TIMEOUT"


async def test_open_gate_cancelled(store: MemoryRunStateStore) -> None:
    runner, inv, header = await _open_gate(store)
    outcome = await runner.cancel_step(inv, reason="run cancelled")
    assert outcome.status == "cancelled"
    assert (await step_events(store, header))[-1].payload["error"]["code"] == "STEP_CANCELLED"


# --- secrets --------------------------------------------------------------------------------------

SECRET = "s3cr3t-Value-9f2c"


async def test_secrets_resolve_on_request_and_never_reach_events(
    store: MemoryRunStateStore,
) -> None:
    seen: dict[str, Any] = {}

    async def connect(ctx: StepContext) -> dict[str, Any]:
        assert isinstance(ctx, RunnerStepContext)
        resolved = await ctx.resolve_params()
        seen["resolved"] = resolved
        seen["direct"] = await ctx.secret("vault:db/password")
        seen["params_after"] = json.loads(json.dumps(dict(ctx.params)))
        # A careless handler echoes the secret back: the runner masks it.
        return {"dsn": f"postgres://app:{resolved['db']['password']}@db/app"}

    async def leak_in_error(ctx: StepContext) -> None:
        value = await ctx.secret("vault:db/password")
        raise RuntimeError(f"login failed for password {value}")

    params = {"db": {"user": "app", "password": {"secretRef": "vault:db/password"}},
              "list": [{"secretRef": "vault:db/password"}, "plain"]}
    plan = make_plan([
        {"stepId": "c", "kind": "connect", "params": params},
        {"stepId": "l", "kind": "leak", "params": {}, "retry": {"maxAttempts": 1}},
    ])
    header = await started_run(store, plan)
    runner = StepRunner(store, registry_with(connect=connect, leak=leak_in_error),
                        secrets=MappingSecretsProvider({"vault:db/password": SECRET}))
    ok = await runner.run(invocation(header, plan, "c"))
    failed = await runner.run(invocation(header, plan, "l"))

    assert seen["resolved"] == {"db": {"user": "app", "password": SECRET},
                                "list": [SECRET, "plain"]}
    assert seen["direct"] == SECRET
    assert seen["params_after"] == params  # params still hold the reference, not the value
    assert ok.status == "succeeded"
    assert ok.output == {"dsn": "postgres://app:***@db/app"}
    assert failed.error is not None
    assert SECRET not in failed.error.message
    assert "***" in failed.error.message
    stored = await store.fetch_events(TENANT, header.run_id)
    assert len(stored) == 5
    for event in stored:
        assert SECRET not in event.model_dump_json(), event.event_type
    assert SECRET not in ok.model_dump_json() + failed.model_dump_json()
    snap = await store.get_snapshot(TENANT, header.run_id)
    assert snap is not None
    assert SECRET not in snap.model_dump_json()


async def test_unresolvable_secret_fails_the_step(store: MemoryRunStateStore) -> None:
    async def needs(ctx: StepContext) -> None:
        await ctx.secret("vault:missing")

    plan = make_plan([{"stepId": "n", "kind": "needs", "retry": {"maxAttempts": 3}}])
    header = await started_run(store, plan)
    outcome = await StepRunner(store, registry_with(needs=needs),
                               secrets=MappingSecretsProvider({})).run(
        invocation(header, plan, "n"))
    assert (outcome.status, outcome.final) == ("failed", True)
    assert outcome.error is not None
    assert outcome.error.code == "SECRET_NOT_FOUND"


# --- wire form ------------------------------------------------------------------------------------


async def test_invocation_and_outcome_round_trip_as_json(store: MemoryRunStateStore) -> None:
    plan = make_plan([{"stepId": "e", "kind": "echo", "params": {"a": [1, 2]},
                       "retry": {"maxAttempts": 2, "nonRetryableErrorCodes": ["X"]},
                       "timeoutMs": 1000, "costHint": {"units": 1}}])
    header = await started_run(store, plan)
    inv = invocation(header, plan, "e", engine_attempt=2)
    wire = inv.model_dump_json()
    assert '"engineAttemptId":2' in wire
    assert '"planParams"' in wire
    back = StepInvocation.model_validate_json(wire)
    assert back == inv
    outcome = await StepRunner(store).run(back)
    assert StepOutcome.model_validate_json(outcome.model_dump_json()) == outcome
    assert StepOutcome.model_validate(json.loads(outcome.model_dump_json())).succeeded
