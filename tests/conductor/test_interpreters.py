"""The coordinator's interpreter cache gives what a rebuild from the snapshot gives, at every
runSeq of real runs (the reference engine writes them), while following the log step by step.

No server: the cache reads only the store. The logs come from the reference engine over the
memory store, so they are the ones every engine writes.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import pytest

from dvt_adapters_conductor.interpreters import InterpreterCache
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.interpreter import RunInterpreter
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.run import RunContext
from dvt_engine.models.snapshot import StepError
from dvt_engine.projector import project
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.waiting import wait_for_terminal

TENANT = "acme"


def window_steps(n: int, fail_at: int | None = None) -> list[dict[str, Any]]:
    """``n`` steps, each depending on the 3 before it (one of them failing, if asked)."""
    return [{"stepId": f"s{i:03d}", "kind": "fail" if i == fail_at else "noop",
             **({"dependsOn": [f"s{j:03d}" for j in range(max(0, i - 3), i)]} if i else {})}
            for i in range(n)]


async def run_on_reference(doc: dict[str, Any]) -> tuple[MemoryRunStateStore, RunContext]:
    """Run a plan document to its end on the reference engine; its store and run."""
    store = MemoryRunStateStore()
    engine = ReferenceEngine(store)
    data = json.dumps(doc, sort_keys=True).encode()
    ref = PlanRef(uri=await store.put_plan(data), sha256=hashlib.sha256(data).hexdigest(),
                  schema_version="v1.2", plan_id=doc["metadata"]["planId"],
                  plan_version="1.0.0", size_bytes=len(data))
    run_id = f"r-{uuid.uuid4().hex[:8]}"
    ctx = RunContext(tenant_id=TENANT, project_id="p", environment_id="e", run_id=run_id,
                     run_request_id=f"req-{run_id}")
    try:
        await engine.start_run(ref, ctx)
        await wait_for_terminal(store, TENANT, run_id, timeout=60)
    finally:
        await engine.close()
    return store, ctx


@pytest.mark.parametrize(("steps", "stride"), [
    (window_steps(40), 1),
    (window_steps(40), 3),
    (window_steps(25, fail_at=12), 1),
    (window_steps(25, fail_at=12), 4),
])
async def test_cache_equals_a_rebuild_at_every_seq(steps: list[dict[str, Any]],
                                                   stride: int) -> None:
    """At each runSeq (every one, or every ``stride``-th): the cached interpreter's state is
    the rebuilt one's, although the previous caller moved it (advance) in between."""
    doc = {"metadata": {"planId": "cache", "planVersion": "1.0.0", "schemaVersion": "v1.2"},
           "steps": steps}
    store, ctx = await run_on_reference(doc)
    plan = ExecutionPlan.model_validate(doc)
    header = await store.get_run(TENANT, ctx.run_id)
    assert header is not None
    events = await store.fetch_events(TENANT, ctx.run_id)
    cache = InterpreterCache(store)
    key = (TENANT, ctx.run_id)
    compared = 0
    for end in [*range(1, len(events), stride), len(events)]:
        upto = events[:end]
        snap = project(header, upto)
        expected = RunInterpreter.from_snapshot(plan, snap, upto, run_params=header.params)
        got = await cache.get(key, plan, snap, None, header.params)
        assert got.to_cursor() == expected.to_cursor(), end
        assert got.startable() == expected.startable(), end
        assert got.in_flight() == expected.in_flight(), end
        compared += 1
        # What a reconcile does with it (start steps, settle one as failed): its moves must
        # not leak into the next answer, even at the same runSeq.
        got.advance()
        if got.in_flight():
            step_id = got.in_flight()[0]
            got.settle(step_id, got.steps[step_id].logical_attempt_id, "failed",
                       StepError(code="STEP_FAILED", message="moved by the caller"))
        again = await cache.get(key, plan, snap, None, header.params)
        assert again.to_cursor() == expected.to_cursor(), end
        assert again.startable() == expected.startable(), end
    assert compared > 5
    if not any(s["kind"] == "fail" for s in steps):
        # A run without failure is followed along its log, never rebuilt after the first.
        assert cache.stats.rebuilds == 1, cache.stats
        assert cache.stats.refreshes + cache.stats.hits == 2 * compared - 1, cache.stats
    else:
        assert cache.stats.rebuilds > 1, cache.stats  # from the failure on


async def test_cache_rebuilds_for_another_plan_object_and_on_a_seq_gone_back() -> None:
    """A context rebuilt with a new plan object, or a snapshot older than the cached one,
    never reuses the cached interpreter."""
    doc = {"metadata": {"planId": "cache2", "planVersion": "1.0.0", "schemaVersion": "v1.2"},
           "steps": window_steps(10)}
    store, ctx = await run_on_reference(doc)
    header = await store.get_run(TENANT, ctx.run_id)
    assert header is not None
    events = await store.fetch_events(TENANT, ctx.run_id)
    cache = InterpreterCache(store)
    key = (TENANT, ctx.run_id)
    plan = ExecutionPlan.model_validate(doc)
    late, early = project(header, events), project(header, events[:5])
    await cache.get(key, plan, late, None, header.params)
    older = await cache.get(key, plan, early, None, header.params)
    assert older.to_cursor() == RunInterpreter.from_snapshot(
        plan, early, events[:5], run_params=header.params).to_cursor()
    other = ExecutionPlan.model_validate(doc)
    again = await cache.get(key, other, late, None, header.params)
    assert again.plan is other
    assert cache.stats.rebuilds == 3, cache.stats
