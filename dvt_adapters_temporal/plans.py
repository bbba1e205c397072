"""Parsed plans shared by the workflow runs of one worker process, keyed by the plan's digest.

Every workflow run of a chain (continue-as-new) starts by turning the prepared plan's JSON into
an ExecutionPlan; at 10,000 steps that alone takes 0.1 to 0.2 s, inside an activation the SDK
gives 2 s. The plan's digest names its bytes and the prepared JSON derives from them alone, and
the model is immutable, so one parsed plan serves every run of the same digest: the workflow's
decisions stay the same whether the cache answers or not (a replay elsewhere parses afresh).
Passed through the workflow sandbox, so the cache outlives a single workflow run.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from dvt_engine.models.plan import ExecutionPlan

CACHE_SIZE = 16

_lock = threading.Lock()
_cache: OrderedDict[tuple[str, int], ExecutionPlan] = OrderedDict()


def parsed_plan(sha256: str, doc: dict[str, Any]) -> ExecutionPlan:
    """The ExecutionPlan of a prepared plan's JSON, parsed once per digest and process."""
    if not sha256:
        return ExecutionPlan.model_validate(doc)
    key = (sha256, len(doc.get("steps", ())))
    with _lock:
        plan = _cache.get(key)
        if plan is not None:
            _cache.move_to_end(key)
            return plan
    plan = ExecutionPlan.model_validate(doc)
    with _lock:
        _cache[key] = plan
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return plan
