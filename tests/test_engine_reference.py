"""The engine contract suite on the reference engine over the memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from contract_tests.engine_suite import (
    EngineContractSuite,
    EngineHarness,
    HarnessCapabilities,
    plan_document,
)
from contract_tests.late_failure import failing_beside_a_gate, report_outcome_late
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import RunStatus, StepStatus
from dvt_engine.models.signals import Actor, Role, SignalType
from dvt_engine.planning.capabilities import CONDUCTOR_CAPABILITIES
from dvt_engine.plugins import open_engine
from dvt_engine.stores.memory import MemoryRunStateStore


class TestReferenceEngine(EngineContractSuite):
    """The reference engine is the oracle: it must pass the whole suite."""

    @pytest.fixture(scope="class")
    @classmethod
    async def engine_harness(cls) -> AsyncIterator[EngineHarness]:
        # One engine and store for the class, as a server-backed adapter would share its
        # engine; every test uses fresh run ids.
        store = MemoryRunStateStore()
        engine = ReferenceEngine(store)
        yield EngineHarness(engine, store, HarnessCapabilities(timeout=30.0))
        await engine.close()


class TestReferenceEnginePausingCancelsInFlight(EngineContractSuite):
    """The reference engine configured with cancelInFlightOnPause: the suite again."""

    @pytest.fixture(scope="class")
    @classmethod
    async def engine_harness(cls) -> AsyncIterator[EngineHarness]:
        store = MemoryRunStateStore()
        engine = ReferenceEngine(store, cancel_in_flight_on_pause=True)
        yield EngineHarness(engine, store,
                            HarnessCapabilities(pause_cancels_in_flight=True, timeout=30.0))
        await engine.close()


class _ConductorShapedReference(ReferenceEngine):
    """A reference engine that declares only Conductor's capabilities, to exercise emulation."""

    capabilities = CONDUCTOR_CAPABILITIES


async def test_emulated_capability_on_an_engine_that_lacks_it() -> None:
    """signal.pause.native missing, emulated by draining pause: the run goes ahead."""
    store = MemoryRunStateStore()
    engine = _ConductorShapedReference(store)
    harness = EngineHarness(engine, store, HarnessCapabilities(timeout=30.0))
    plan = plan_document("emulate-pause", [{"stepId": "a", "kind": "noop"}],
                         requiresCapabilities=["signal.pause.native"],
                         fallbackBehavior="emulate")
    try:
        report = await engine.validate(ExecutionPlan.model_validate(plan))
        assert report.ok
        assert report.capabilities is not None
        assert report.capabilities.resolution == "emulated"
        assert report.capabilities.missing == ("signal.pause.native",)
        run = await EngineContractSuite().start(harness, plan)
        assert (await run.finished()).status == RunStatus.COMPLETED
    finally:
        await engine.close()


async def test_reference_engine_is_found_by_name() -> None:
    """open_engine("reference") gives the engine the suite above exercises."""
    store = MemoryRunStateStore()
    engine = open_engine("reference", store=store)
    try:
        assert isinstance(engine, ReferenceEngine)
        assert engine.name == "reference"
    finally:
        await engine.close()


async def test_a_finished_run_leaves_no_driver_and_the_store_answers_for_it() -> None:
    """A service runs runs for months: a finished run's driver is dropped, and its status and
    a late cancel are answered from the store."""
    store = MemoryRunStateStore()
    engine = ReferenceEngine(store)
    harness = EngineHarness(engine, store, HarnessCapabilities(timeout=30.0))
    try:
        runs = [await EngineContractSuite().start(
            harness, plan_document(f"forget-{i}", [{"stepId": "a", "kind": "noop"}]))
            for i in range(3)]
        for run in runs:
            assert (await run.finished()).status == RunStatus.COMPLETED
        await engine.wait_idle()
        assert engine._drivers == {}
        status = await engine.get_run_status(runs[0].ref)
        assert (status.run_id, status.status) == (runs[0].run_id, RunStatus.COMPLETED)
        await engine.cancel_run(runs[0].ref, "too late")  # nothing left to cancel: no error
        assert (await store.get_snapshot(runs[0].tenant_id, runs[0].run_id)
                ).status == RunStatus.COMPLETED  # type: ignore[union-attr]
    finally:
        await engine.close()


async def test_a_signal_decided_on_a_failure_the_driver_has_not_handled_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The step's attempt writes StepFailed before the driver hears of it; an approval decided
    in between is applied after the failure, so the failFast run starts nothing new."""
    released = report_outcome_late(monkeypatch, "bad")
    store = MemoryRunStateStore()
    engine = ReferenceEngine(store)
    harness = EngineHarness(engine, store, HarnessCapabilities(timeout=30.0))
    try:
        run = await EngineContractSuite().start(harness, plan_document(
            "late-failure", failing_beside_a_gate(), failurePolicy="failFast"))
        await run.wait(lambda s: s.step("bad").status == StepStatus.FAILED
                       and s.step("gate").substatus == "AWAITING_APPROVAL",
                       "bad failed while the gate waits")
        decision = await run.signal(SignalType.APPROVE_STEP, Actor(id="op", roles=(Role.APPROVER,)),
                                    {"stepId": "gate", "decision": "approve"})
        assert decision.accepted, decision
        driver = engine._drivers[(run.tenant_id, run.run_id)]
        # The driver handles a message whole before it takes the next: once the approval has
        # left the inbox, it has been applied or held. Yielding turns, no wall clock involved.
        while not driver.inbox.empty():  # noqa: ASYNC110
            await asyncio.sleep(0)
        released.set()
        final = await run.finished()
        assert final.status == RunStatus.FAILED
        assert final.step("gate").status == StepStatus.FAILED  # cancelled by the failing run
        assert final.step("after-gate").status == StepStatus.PENDING
        assert not [e for e in await run.events() if e.step_id == "after-gate"]
    finally:
        await engine.close()
