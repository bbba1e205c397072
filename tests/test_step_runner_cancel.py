"""The step runner: cancellation, refusal and redelivery of step invocations."""

from __future__ import annotations

import asyncio

import pytest
from step_runner_helpers import (
    TENANT,
    WAIT_S,
    append_engine_event,
    invocation,
    make_plan,
    registry_with,
    started_run,
    step_events,
    types_of,
)

from dvt_engine.errors import StepCancelled
from dvt_engine.eventlog import EventFactory, RunWriter
from dvt_engine.models.run import RunStatus, StepStatus
from dvt_engine.ports import StepContext
from dvt_engine.steps import (
    CancelToken,
    HandlerFailure,
    StepRunner,
)
from dvt_engine.stores.memory import MemoryRunStateStore


@pytest.fixture
async def store() -> MemoryRunStateStore:
    return MemoryRunStateStore()


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
