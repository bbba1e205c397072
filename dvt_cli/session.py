"""Opening the store and the engine a command works with, with coded errors for what is missing."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from dvt_cli import devenv
from dvt_cli.output import notice
from dvt_cli.settings import DEFAULT_STORE_URL, EngineAddresses, Settings, choose_engine
from dvt_engine.artifacts import ArtifactStore
from dvt_engine.errors import (
    DvtError,
    EngineNotFound,
    StoreNotFound,
    StoreUnavailable,
    UsageError,
)
from dvt_engine.plugins import open_configured_artifact_store, open_engine, open_store
from dvt_engine.ports import RunStateStore, WorkflowEngine
from dvt_engine.steps.registry import HandlerRegistry, default_registry

EXTRAS = frozenset({"temporal", "conductor", "postgres"})
MEMORY_NOTE = (
    "dvt: using the in-memory store: this run lives only as long as this command "
    "(run `dvt dev up` or set DVT_STORE_URL for runs that other commands can see)"
)


# The modules --handlers named, in order: the CLI's own explicit list, read by load_engine.
_HANDLER_MODULES: list[ModuleType] = []


def import_handlers(modules: str | None) -> None:
    """Import the host modules ``--handlers`` names; their ``@step_handler`` kinds join the
    registry every engine of this command gets (``handler_registry``)."""
    _HANDLER_MODULES.clear()
    if not modules:
        return
    if os.getcwd() not in sys.path:
        # A console script does not put the working directory on the path; `python -m` does.
        sys.path.insert(0, os.getcwd())
    for name in (m.strip() for m in modules.split(",")):
        if not name:
            continue
        try:
            _HANDLER_MODULES.append(importlib.import_module(name))
        except ImportError as exc:
            raise UsageError(f"cannot import handler module {name!r}: {exc}",
                             details={"module": name,
                                      "hint": "Pass an importable module name (DVT_HANDLERS)."}
                             ) from None


def handler_registry() -> HandlerRegistry:
    """Built-ins, installed entry points, then the ``--handlers`` modules' declared handlers."""
    registry = default_registry()
    for module in _HANDLER_MODULES:
        registry.register_module(module)
    return registry


def resolve(settings: Settings) -> Settings:
    """Fill the store URL and engine addresses the user left open from running dev servers."""
    if settings.store_url and all(
        (settings.addresses.temporal_address, settings.addresses.conductor_url)
    ):
        return settings
    store_url, addresses = devenv.running_setup()
    return settings.with_dev(store_url, addresses)


def pick_engine(settings: Settings) -> str:
    """The engine name for this command, printing the fallback notice (stderr) when there is one."""
    name, fallback = choose_engine(settings.engine)
    if fallback:
        notice(fallback)
    return name


def engine_options(name: str, settings: Settings, *, worker: bool = True) -> dict[str, Any]:
    """Engine-specific options from the CLI settings (only what the user configured)."""
    a = settings.addresses
    options: dict[str, Any] = {}
    if name == "temporal":
        if a.temporal_address:
            options["address"] = a.temporal_address
        if a.temporal_namespace:
            options["namespace"] = a.temporal_namespace
        if a.temporal_task_queue:
            options["task_queue"] = a.temporal_task_queue
        options["worker"] = worker
    elif name == "conductor":
        if a.conductor_url:
            options["server_url"] = a.conductor_url
        options["worker"] = worker
    return options


def prepare_local_servers(engine: str, settings: Settings) -> Settings:
    """Start what a default `dvt run` needs when nothing is configured, and say so in one line.

    The engines never start a server themselves (ENGINE_NOT_CONFIGURED without an address):
    this local path does it explicitly. With Temporal and no address the background dev server
    is started (it stays up for the next command, like `dvt dev up`), and with the PostgreSQL
    store installed an embedded PostgreSQL becomes the store, so the run outlives the command.
    """
    a = settings.addresses
    started: list[str] = []
    if engine == "temporal" and not a.temporal_address:
        info = devenv.temporal_up()
        settings = settings.with_dev(None, EngineAddresses(temporal_address=info["address"]))
        started.append(f"Temporal dev server at {info['address']}")
    elif engine == "conductor" and not a.conductor_url:
        info = devenv.conductor_up()
        settings = settings.with_dev(None, EngineAddresses(conductor_url=str(info["serverUrl"])))
        started.append(f"Conductor server at {info['serverUrl']}")
    if started and not settings.store_url and devenv.postgres_available():
        pg = devenv.postgres_up()
        settings = settings.with_dev(pg["url"], EngineAddresses())
        started.append("PostgreSQL store")
    if started:
        notice(f"dvt: started the local {' and '.join(started)} in the background "
               "(`dvt dev down` stops them)")
    return settings


async def _open_store(url: str) -> RunStateStore:
    try:
        return await open_store(url)
    except DvtError:
        raise
    except ImportError as exc:
        raise StoreNotFound(f"the store for {url.split(':', 1)[0]}:// cannot be loaded: {exc}",
                            details={"hint": "install the store's extra, e.g. 'dvt[postgres]'"}
                            ) from None
    except OSError as exc:
        raise StoreUnavailable(f"cannot open the store: {exc}") from None


@contextlib.asynccontextmanager
async def store_session(settings: Settings, *, quiet_memory: bool = False) -> AsyncIterator[
    RunStateStore
]:
    """The store of this command, closed afterwards."""
    url = settings.store_url or DEFAULT_STORE_URL
    if url.startswith("memory:") and not quiet_memory:
        notice(MEMORY_NOTE)
    store = await _open_store(url)
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def artifact_session() -> AsyncIterator[ArtifactStore | None]:
    """The artifact store steps of this command put into, closed afterwards.

    ``DVT_ARTIFACTS_URL`` (and the other ``DVT_ARTIFACTS_*`` settings), else the local
    directory ``$DVT_HOME/artifacts``, so `dvt run` and a `dvt worker` in another shell share
    it; None when the artifacts extra is not installed and nothing is configured.
    """
    artifacts = await open_configured_artifact_store()
    try:
        yield artifacts
    finally:
        if artifacts is not None:
            await artifacts.close()


def load_engine(name: str, store: RunStateStore, options: dict[str, Any],
                artifacts: ArtifactStore | None = None) -> WorkflowEngine:
    """Open an engine by name; an adapter that is registered but cannot load is ENGINE_NOT_FOUND."""
    try:
        return open_engine(name, store=store, **{"registry": handler_registry(),
                                                 "artifacts": artifacts, **options})
    except DvtError:
        raise
    except ImportError as exc:
        hint = (f"install its extra: pip install 'dvt[{name}]'" if name in EXTRAS
                else "this installation of dvt is incomplete; reinstall it")
        raise EngineNotFound(
            f"the {name} engine is registered but cannot be loaded: {exc}",
            details={"engine": name, "hint": hint},
        ) from None


@contextlib.asynccontextmanager
async def engine_session(
    name: str, store: RunStateStore, settings: Settings, *, worker: bool = True
) -> AsyncIterator[WorkflowEngine]:
    """An engine over ``store`` and the command's artifact store, closed (workers drained)
    afterwards."""
    async with artifact_session() as artifacts:
        engine = load_engine(name, store, engine_options(name, settings, worker=worker),
                             artifacts)
        try:
            yield engine
        finally:
            await engine.close()
