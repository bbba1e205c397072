"""A run's writers sharing one view of it: no read before an append, held events, stale views.

The store under test is the real memory store; ``CountingStore`` only counts its calls.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from contract_tests.store_helpers import happy_path, make_header
from dvt_engine import Client, PlanBuilder, ReferenceSettings
from dvt_engine.errors import IllegalTransition
from dvt_engine.eventlog import EventFactory, RunView, RunWriter
from dvt_engine.models.events import AppendResult, Event
from dvt_engine.models.run import RunHeader, StepStatus
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.plugins import open_engine
from dvt_engine.steps import StepRunner, builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore
from tests import conditional_append_checks as checks
from tests.step_runner_helpers import (
    TENANT as RUNNER_TENANT,
)
from tests.step_runner_helpers import (
    WAIT_S,
    invocation,
    make_plan,
    registry_with,
    started_run,
    step_events,
    types_of,
)

TENANT = "view-tenant"


class CountingStore(MemoryRunStateStore):
    """The memory store, counting the calls a writer makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    async def get_snapshot(self, tenant_id: str, run_id: str) -> RunSnapshot | None:
        """Counted."""
        self.calls["get_snapshot"] += 1
        return await super().get_snapshot(tenant_id, run_id)

    async def append(self, event: Event) -> AppendResult:
        """Counted."""
        self.calls["append"] += 1
        return await super().append(event)

    async def append_if_last(self, event: Event, expected_last_seq: int) -> AppendResult | None:
        """Counted."""
        self.calls["append_if_last"] += 1
        return await super().append_if_last(event, expected_last_seq)

    async def append_batch_if_last(
        self, events: Sequence[Event], expected_last_seq: int
    ) -> list[AppendResult] | None:
        """Counted."""
        self.calls["append_batch_if_last"] += 1
        return await super().append_batch_if_last(events, expected_last_seq)


async def _started_run(store: MemoryRunStateStore, steps: list[str]) -> RunHeader:
    header, _ = await store.register_run(make_header(steps=steps))
    await store.append(happy_path(header)[0])
    return header


async def test_memory_batch_appends_only_at_the_expected_run_seq() -> None:
    await checks.appends_only_at_the_expected_run_seq(MemoryRunStateStore())


async def test_memory_batch_refuses_once_another_writer_moved_the_run() -> None:
    store = MemoryRunStateStore()
    await checks.refuses_once_another_writer_moved_the_run(store, store)


async def test_memory_batch_answers_stored_keys_as_duplicates() -> None:
    await checks.answers_stored_keys_as_duplicates(MemoryRunStateStore())


async def test_a_writer_with_a_view_reads_the_run_once() -> None:
    store = CountingStore()
    header = await _started_run(store, ["a", "b"])
    writer = RunWriter(store, header, RunView())
    for event in happy_path(header)[1:5]:
        await writer.append(event)
    assert store.calls["get_snapshot"] == 1
    assert store.calls["append_if_last"] == 4
    stored = await store.fetch_events(header.tenant_id, header.run_id)
    assert [e.run_seq for e in stored] == [1, 2, 3, 4, 5]


async def test_a_view_made_stale_by_another_writer_is_decided_by_the_store() -> None:
    store = CountingStore()
    header = await _started_run(store, ["a"])
    writer = RunWriter(store, header, RunView())
    factory = EventFactory(header, emitted_by="engine")
    await writer.append(factory.step_event("StepStarted", "a", {"kind": "noop"}))
    # Another writer of the run (no view) ends it; the view still says RUNNING.
    await RunWriter(store, header).append(factory.run_event("RunCancelled", {"reason": "x"}))
    with pytest.raises(IllegalTransition):
        await writer.append(factory.step_event("StepCompleted", "a", {"output": {}}))
    stored = await store.fetch_events(header.tenant_id, header.run_id)
    assert [e.event_type for e in stored] == ["RunStarted", "StepStarted", "RunCancelled"]


async def test_a_held_event_goes_in_with_the_next_append_in_one_call() -> None:
    store = CountingStore()
    header = await _started_run(store, ["a"])
    writer = RunWriter(store, header, RunView())
    factory = EventFactory(header, emitted_by="step-runner")
    assert await writer.hold(factory.step_event("StepStarted", "a", {"kind": "noop"}))
    assert len(await store.fetch_events(header.tenant_id, header.run_id)) == 1
    done = await writer.append(factory.step_event("StepCompleted", "a", {"output": {}}))
    assert done.run_seq == 3
    assert store.calls["append_batch_if_last"] == 1
    assert store.calls["append_if_last"] == 0
    stored = await store.fetch_events(header.tenant_id, header.run_id)
    assert [(e.run_seq, e.event_type) for e in stored] == [
        (1, "RunStarted"), (2, "StepStarted"), (3, "StepCompleted")]


async def test_an_illegal_event_is_not_held_and_flush_writes_what_is() -> None:
    store = MemoryRunStateStore()
    header = await _started_run(store, ["a"])
    writer = RunWriter(store, header, RunView())
    factory = EventFactory(header, emitted_by="step-runner")
    assert not await writer.hold(factory.step_event("StepCompleted", "a", {"output": {}}))
    assert await writer.hold(factory.step_event("StepStarted", "a", {"kind": "noop"}))
    await writer.flush()
    snapshot = await store.get_snapshot(header.tenant_id, header.run_id)
    assert snapshot is not None
    assert snapshot.step("a").status == StepStatus.RUNNING


async def test_a_held_start_the_run_no_longer_allows_is_not_written() -> None:
    store = MemoryRunStateStore()
    header = await _started_run(store, ["a"])
    view = RunView()
    writer = RunWriter(store, header, view)
    factory = EventFactory(header, emitted_by="step-runner")
    assert await writer.hold(factory.step_event("StepStarted", "a", {"kind": "noop"}))
    await RunWriter(store, header).append(
        EventFactory(header, emitted_by="engine").run_event("RunCancelled", {"reason": "x"}))
    with pytest.raises(IllegalTransition):
        await writer.append(factory.step_event("StepCompleted", "a", {"output": {}}))
    assert view.pending == []
    stored = await store.fetch_events(header.tenant_id, header.run_id)
    assert [e.event_type for e in stored] == ["RunStarted", "RunCancelled"]


async def _run_on_reference(store: MemoryRunStateStore, plan: dict[str, Any],
                            **engine_options: Any) -> tuple[str, RunSnapshot]:
    registry = builtin_registry()
    engine = open_engine(ReferenceSettings(), store=store, registry=registry,
                         artifacts=MemoryArtifactStore(), **engine_options)
    async with Client(engine=engine, store=store, tenant=TENANT) as client:
        handle = await client.start_run(plan, run_id="view-run")
        return handle.run_id, await handle.result(timeout=60)


async def test_reference_engine_writes_a_quick_step_in_one_call() -> None:
    store = CountingStore()
    plan = (PlanBuilder("view-chain", "1").step("a", "noop")
            .step("b", "noop", depends_on=["a"]).step("c", "noop", depends_on=["b"]).build())
    run_id, snapshot = await _run_on_reference(store, plan)
    assert snapshot.status == "COMPLETED"
    # Each step's StepStarted and StepCompleted together, unless the machine stalled a step
    # past the hold (then its StepStarted goes alone, by append_if_last).
    assert store.calls["append_batch_if_last"] + store.calls["append_if_last"] >= 3
    assert store.calls["append_batch_if_last"] >= 1
    events = await store.fetch_events(TENANT, run_id)
    assert [(e.event_type, e.step_id) for e in events] == [
        ("RunStarted", None), ("StepStarted", "a"), ("StepCompleted", "a"),
        ("StepStarted", "b"), ("StepCompleted", "b"), ("StepStarted", "c"),
        ("StepCompleted", "c"), ("RunCompleted", None)]
    assert [e.run_seq for e in events] == list(range(1, 9))
    assert snapshot == await store.project(TENANT, run_id)


async def test_a_long_step_is_running_in_the_store_while_its_handler_runs() -> None:
    store = MemoryRunStateStore()
    release = asyncio.Event()
    registry = builtin_registry()

    @registry.handler("wait.release")
    async def wait_release(ctx: Any) -> dict[str, Any]:
        await release.wait()
        return {}

    engine = open_engine(ReferenceSettings(), store=store, registry=registry,
                         artifacts=MemoryArtifactStore())
    plan = PlanBuilder("view-long", "1").step("long", "wait.release").build()
    async with Client(engine=engine, store=store, tenant=TENANT) as client:
        handle = await client.start_run(plan, run_id="view-long-run")
        # The held StepStarted is written on its own once the hold is over, handler running.
        async for event in store.follow(TENANT, handle.run_id):
            if event.event_type == "StepStarted":
                break
        snapshot = await store.get_snapshot(TENANT, handle.run_id)
        assert snapshot is not None
        assert snapshot.step("long").status == StepStatus.RUNNING
        release.set()
        final = await handle.result(timeout=60)
    assert final.status == "COMPLETED"


async def test_a_worker_s_runner_lends_an_attempt_a_view_and_writes_one_call() -> None:
    """A runner whose engine keeps no view of the run (a worker of an engine whose run driver
    lives elsewhere) reads the run once and writes a quick step's two events in one call."""
    store = CountingStore()
    plan = make_plan([{"stepId": "a", "kind": "noop"}])
    header = await started_run(store, plan)
    runner = StepRunner(store, builtin_registry())
    store.calls.clear()
    outcome = await runner.run(invocation(header, plan, "a"))
    assert outcome.status == "succeeded"
    assert store.calls == Counter({"get_snapshot": 1, "append_batch_if_last": 1})
    assert types_of(await step_events(store, header)) == ["StepStarted", "StepCompleted"]
    assert runner.views == {}
    assert runner._lent == {}  # nothing is kept once the attempt ends


async def test_a_lent_view_another_writer_moved_is_read_again_and_the_log_stays_whole() -> None:
    store = CountingStore()
    plan = make_plan([{"stepId": "a", "kind": "wait.release"}, {"stepId": "b", "kind": "noop"}])
    header = await started_run(store, plan)
    release = asyncio.Event()
    started = asyncio.Event()

    async def wait_release(ctx: Any) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {}

    runner = StepRunner(store, registry_with(wait_release=wait_release))
    runner.start_hold_s = 3600.0  # keep a's StepStarted held while b is written
    attempt = asyncio.create_task(runner.run(invocation(header, plan, "a")))
    await asyncio.wait_for(started.wait(), WAIT_S)
    # Another process's writer appends to the run while a's start is held.
    other = StepRunner(store, builtin_registry())
    assert (await other.run(invocation(header, plan, "b"))).status == "succeeded"
    release.set()
    assert (await asyncio.wait_for(attempt, WAIT_S)).status == "succeeded"
    events = await store.fetch_events(RUNNER_TENANT, header.run_id)
    assert [(e.event_type, e.step_id) for e in events] == [
        ("RunStarted", None), ("StepStarted", "b"), ("StepCompleted", "b"),
        ("StepStarted", "a"), ("StepCompleted", "a")]
    assert [e.run_seq for e in events] == [1, 2, 3, 4, 5]
    assert await store.get_snapshot(RUNNER_TENANT, header.run_id) == await store.project(
        RUNNER_TENANT, header.run_id)


async def test_attempts_of_one_run_in_one_process_share_the_lent_view() -> None:
    store = CountingStore()
    plan = make_plan([{"stepId": s, "kind": "wait.release"} for s in ("a", "b", "c")])
    header = await started_run(store, plan)
    release = asyncio.Event()
    waiting = 0
    all_started = asyncio.Event()

    async def wait_release(ctx: Any) -> dict[str, Any]:
        nonlocal waiting
        waiting += 1
        if waiting == 3:
            all_started.set()
        await release.wait()
        return {}

    runner = StepRunner(store, registry_with(wait_release=wait_release))
    runner.start_hold_s = 3600.0
    store.calls.clear()
    attempts = [asyncio.create_task(runner.run(invocation(header, plan, s)))
                for s in ("a", "b", "c")]
    await asyncio.wait_for(all_started.wait(), WAIT_S)
    assert len(runner._lent) == 1
    assert runner._lent[RUNNER_TENANT, header.run_id][1] == 3
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*attempts), WAIT_S)
    assert [o.status for o in outcomes] == ["succeeded"] * 3
    # One read for the three; the writers took turns on the view, so none found it stale.
    assert store.calls["get_snapshot"] == 1
    assert runner._lent == {}
    assert await store.get_snapshot(RUNNER_TENANT, header.run_id) == await store.project(
        RUNNER_TENANT, header.run_id)
