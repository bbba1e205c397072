"""Signals decided on the truth with the PostgreSQL store: the signal rules of the engine suite
(PAUSE then RESUME, racing gate decisions and retries, the storm) on the reference engine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from contract_tests.engine_harness import EngineHarness, HarnessCapabilities
from contract_tests.engine_suite_signals import SignalRuleTests
from dvt_engine.engines.reference import ReferenceEngine
from dvt_statestore_pg.store import PostgresRunStateStore


class TestReferenceEngineOnPostgresSignals(SignalRuleTests):
    """The shared signal tests with every decision and event in PostgreSQL."""

    @pytest.fixture
    async def engine_harness(
        self, pg_store: PostgresRunStateStore
    ) -> AsyncIterator[EngineHarness]:
        engine = ReferenceEngine(pg_store)
        yield EngineHarness(engine, pg_store, HarnessCapabilities(timeout=60.0))
        await engine.close()
