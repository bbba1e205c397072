"""dvt on Temporal: one generic interpreter workflow runs every plan (contract §8.1).

Names are imported lazily so that importing a light submodule (``search_attributes``) does not
pull the engine, and with it network code, into a workflow sandbox.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CAPABILITIES": "dvt_adapters_temporal.engine",
    "TemporalEngine": "dvt_adapters_temporal.engine",
    "workflow_id_for": "dvt_adapters_temporal.engine",
    "TemporalSettings": "dvt_adapters_temporal.settings",
    "TlsSettings": "dvt_adapters_temporal.settings",
    "run_worker": "dvt_adapters_temporal.engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
