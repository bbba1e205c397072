"""The Temporal suite's fixture names, over the dvt pytest plugin's servers (dvt_testing).

One dev server and one time-skipping server per session come from the plugin; the names below
are what these tests have always used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from dvt_adapters_temporal.engine import TemporalEngine
from dvt_engine.settings import TemporalSettings
from dvt_engine.stores.memory import MemoryRunStateStore


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_env(dvt_temporal_address: str) -> WorkflowEnvironment:
    """The plugin's dev server as a WorkflowEnvironment (its client, no time skipping)."""
    return WorkflowEnvironment.from_client(await Client.connect(dvt_temporal_address))


@pytest.fixture(scope="session")
def time_skipping(dvt_temporal_time_skipping: WorkflowEnvironment) -> WorkflowEnvironment:
    """The plugin's time-skipping server."""
    return dvt_temporal_time_skipping


@pytest.fixture
def memory_store(dvt_memory_store: MemoryRunStateStore) -> MemoryRunStateStore:
    """A fresh in-memory store per test."""
    return dvt_memory_store


@pytest_asyncio.fixture(loop_scope="session")
async def engine(
    dvt_temporal_settings: TemporalSettings, memory_store: MemoryRunStateStore
) -> AsyncIterator[TemporalEngine]:
    """A Temporal engine with its own task queue and in-process workers, closed after the test."""
    eng = TemporalEngine(store=memory_store, settings=dvt_temporal_settings)
    try:
        yield eng
    finally:
        await eng.close()
