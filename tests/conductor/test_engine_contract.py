"""The shared engine contract suite and every golden scenario, on a real Conductor server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from conductor_helpers import make_engine

from contract_tests.engine_suite import EngineContractSuite, EngineHarness, HarnessCapabilities
from dvt_engine.stores.memory import MemoryRunStateStore


class TestConductorEngine(EngineContractSuite):
    """Conductor pauses by draining (declared), everything else as the contract says."""

    @pytest.fixture
    async def engine_harness(
        self, conductor_url: str
    ) -> AsyncIterator[EngineHarness]:
        store = MemoryRunStateStore()
        engine = make_engine(conductor_url, store)
        yield EngineHarness(engine, store, HarnessCapabilities(pause_drains=True, timeout=60.0))
        await engine.close()
