"""Parsed plans shared by the workflow runs of one worker process, keyed by the plan's digest.

Every workflow run of a chain (continue-as-new) starts by turning the prepared plan's JSON into
an ExecutionPlan; at 10,000 steps that alone takes 0.1 to 0.2 s, inside an activation the SDK
gives 2 s. The plan's digest names its bytes and the prepared JSON derives from them alone, and
the model is immutable, so one parsed plan serves every run of the same digest: the workflow's
decisions stay the same whether the cache answers or not (a replay elsewhere parses afresh).
Passed through the workflow sandbox, so the cache outlives a single workflow run.

The prepared plan travels packed (zlib, base64) since ``dvt-compact-carry``: every workflow run
of a chain holds it once in its history, 825 KB of JSON for a 10,000-step chain, 84 KB packed;
with the cache answering, a run never unpacks it.
"""

from __future__ import annotations

import base64
import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from dvt_engine.models.plan import ExecutionPlan

CACHE_SIZE = 16

_lock = threading.Lock()
_cache: OrderedDict[tuple[str, int], ExecutionPlan] = OrderedDict()


def pack(doc: dict[str, Any]) -> str:
    """A plan's JSON as compact text for a history: zlib-compressed, base64-encoded."""
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def unpack(packed: str) -> dict[str, Any]:
    """The plan JSON of ``pack``'s text."""
    doc: dict[str, Any] = json.loads(zlib.decompress(base64.b64decode(packed)))
    return doc


def parsed_plan(sha256: str, doc: dict[str, Any] | Callable[[], dict[str, Any]]
                ) -> ExecutionPlan:
    """The ExecutionPlan of a prepared plan's JSON, parsed once per digest and process.

    ``doc`` may be a function that returns the JSON: a packed plan is then unpacked only when
    the cache misses.
    """
    if not sha256:
        return ExecutionPlan.model_validate(doc() if callable(doc) else doc)
    key = (sha256, -1 if callable(doc) else len(doc.get("steps", ())))
    with _lock:
        plan = _cache.get(key)
        if plan is not None:
            _cache.move_to_end(key)
            return plan
    plan = ExecutionPlan.model_validate(doc() if callable(doc) else doc)
    with _lock:
        _cache[key] = plan
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return plan
