"""The step runner: events per outcome, engine retries, timeouts and output limits."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest
from step_runner_helpers import (
    TENANT,
    invocation,
    make_plan,
    registry_with,
    started_run,
    step_events,
    types_of,
)

from dvt_engine.errors import SecretNotFound
from dvt_engine.models.run import StepStatus
from dvt_engine.ports import StepContext, StepResult
from dvt_engine.steps import (
    MAX_OUTPUT_BYTES,
    HandlerFailure,
    StepRunner,
)
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore


@pytest.fixture
async def store() -> MemoryRunStateStore:
    return MemoryRunStateStore()


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
    artifacts = MemoryArtifactStore()

    async def produce(ctx: StepContext) -> StepResult:
        parquet = await ctx.artifacts.put(b"PAR1", kind="parquet")
        csv = await ctx.artifacts.put(b"a,b\n", kind="csv", media_type="text/csv")
        return StepResult(output={"rows": 10},
                          artifacts=[parquet, csv.model_dump(mode="json")], cost_units=7.0)

    plan = make_plan([{"stepId": "p", "kind": "produce", "costHint": {"units": 1}}])
    header = await started_run(store, plan)
    outcome = await StepRunner(store, registry_with(produce=produce), artifacts=artifacts).run(
        invocation(header, plan, "p"))
    assert outcome.status == "succeeded"
    digests = [hashlib.sha256(b"PAR1").hexdigest(), hashlib.sha256(b"a,b\n").hexdigest()]
    assert [a.sha256 for a in outcome.artifacts] == digests
    payload = (await step_events(store, header))[-1].payload
    assert payload["artifacts"] == [
        {"uri": artifacts.uri_for(digests[0]), "kind": "parquet", "sha256": digests[0],
         "sizeBytes": 4, "mediaType": "application/octet-stream"},
        {"uri": artifacts.uri_for(digests[1]), "kind": "csv", "sha256": digests[1],
         "sizeBytes": 4, "mediaType": "text/csv"},
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
