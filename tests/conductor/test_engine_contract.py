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
        # Each wait may take longer than on the in-process engines: every step is a round trip
        # through the server, whose decider walks the whole workflow (chain-250: ~0.2 s a step
        # here, more on a busy 2-core machine).
        yield EngineHarness(engine, store, HarnessCapabilities(pause_drains=True, timeout=180.0))
        await engine.close()
