"""dvt's search attributes on Temporal; the local servers themselves live in ``dvt_local``.

The engine needs only the attribute names and keys below. The names that used to start local
servers here (``start_dev_server``, ``local_dev_env``, ...) are forwarded to
``dvt_local.temporal`` on first use, so this module imports without the ``local`` extra.
"""

from __future__ import annotations

import importlib
from typing import Any

from temporalio.common import SearchAttributeKey

# Registered as Keyword search attributes on servers that allow custom attributes.
SEARCH_ATTRIBUTE_NAMES: tuple[str, ...] = ("tenantId", "projectId", "environmentId")

_MOVED = frozenset({
    "DEV_SERVER_DIST", "DEV_SERVER_VERSION", "TEST_SERVER_DIST", "TEST_SERVER_VERSION",
    "DEFAULT_PORT", "DevServerError", "dev_server_command", "dev_server_path",
    "test_server_path", "wait_until_ready", "start_dev_server", "read_dev_server",
    "stop_dev_server", "local_dev_env", "time_skipping_env",
})


def search_attribute_keys() -> list[SearchAttributeKey[str]]:
    """The dvt ownership search attributes as typed keys."""
    return [SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTE_NAMES]


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module("dvt_local.temporal"), name)
    if name == "free_port":
        return importlib.import_module("dvt_local.lifecycle").free_port
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
