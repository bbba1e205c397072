"""The shared engine contract suite (golden scenarios included) on a real Temporal dev server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from contract_tests.engine_suite import EngineContractSuite, EngineHarness, HarnessCapabilities
from dvt_adapters_temporal.engine import TemporalEngine
from dvt_engine.plugins import open_engine
from dvt_engine.stores.memory import MemoryRunStateStore


def _open(
    env: WorkflowEnvironment, store: MemoryRunStateStore, **options: object
) -> TemporalEngine:
    engine = open_engine(
        "temporal",
        store=store,
        address=env.client.service_client.config.target_host,
        task_queue=f"contract-{uuid.uuid4().hex[:8]}",
        **options,
    )
    assert isinstance(engine, TemporalEngine)
    return engine


class TestTemporalEngine(EngineContractSuite):
    """The Temporal engine, opened by name, passes the whole suite."""

    @pytest.fixture(scope="class")
    @classmethod
    async def engine_harness(
        cls, temporal_env: WorkflowEnvironment
    ) -> AsyncIterator[EngineHarness]:
        # One engine (and its in-process workers) for the class; every test uses fresh run ids.
        store = MemoryRunStateStore()
        engine = _open(temporal_env, store)
        yield EngineHarness(engine, store, HarnessCapabilities(timeout=60.0))
        await engine.close()


class TestTemporalEnginePausingCancelsInFlight(EngineContractSuite):
    """Temporal with cancelInFlightOnPause: running steps are cancelled at PAUSE."""

    @pytest.fixture(scope="class")
    @classmethod
    async def engine_harness(
        cls, temporal_env: WorkflowEnvironment
    ) -> AsyncIterator[EngineHarness]:
        store = MemoryRunStateStore()
        engine = _open(temporal_env, store, cancel_in_flight_on_pause=True)
        yield EngineHarness(engine, store,
                            HarnessCapabilities(pause_cancels_in_flight=True, timeout=60.0))
        await engine.close()
