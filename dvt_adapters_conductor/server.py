"""Where a local Conductor server for development lives; the server code is ``dvt_local``.

``ConductorServer``, ``local_server``, ``fetch_jar`` and the other names that used to be defined
here are forwarded to ``dvt_local.conductor`` on first use, so the adapter imports without the
``local`` extra. ``dev_up`` keeps its old shape (a dict with ``serverUrl``) for callers that
start the background server of ``DVT_HOME`` without a path.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from dvt_engine.errors import EngineUnavailable

_MOVED = frozenset({
    "CONDUCTOR_VERSION", "ConductorServer", "local_server", "fetch_jar", "jar_path",
    "maven_repository", "java_executable",
})


def _local() -> Any:
    try:
        return importlib.import_module("dvt_local.conductor")
    except ImportError as exc:
        raise EngineUnavailable(
            f"no local Conductor server can be started here: {exc}",
            retryable=False,
            details={"hint": "pip install 'dvt[local]', or set DVT_CONDUCTOR_URL"},
        ) from None


def dev_state_dir() -> Path:
    """Directory of the long-lived server that ``dvt dev up`` starts."""
    return Path(os.environ.get("DVT_HOME", Path.home() / ".dvt")) / "conductor"


def dev_up() -> dict[str, object]:
    """Find or start the background server of ``DVT_HOME``; its record with ``serverUrl``."""
    record = _local().dev_up(dev_state_dir()).record
    return {**record.describe(), "serverUrl": record.url, "healthy": True}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(_local(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
