"""Plan size: the incremental structures give exactly what the full recomputations give, and a
long run does per-edge, not per-step-squared, scheduling work (counted, never timed)."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_projector_properties import log_strategy
from test_scheduler_properties import dags, plan_of

from dvt_engine import Client, ReferenceSettings
from dvt_engine.checksum import snapshot_bytes
from dvt_engine.models.events import Event
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import RunHeader, StepStatus
from dvt_engine.models.step_index import find_step
from dvt_engine.plugins import open_engine
from dvt_engine.projector import Projection, initial_snapshot, project
from dvt_engine.scheduler import ReadySteps, ready_steps
from dvt_engine.steps import builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=log_strategy, views=st.lists(st.booleans(), min_size=1, max_size=80))
def test_a_projection_folded_event_by_event_equals_project_byte_for_byte(
    log: tuple[RunHeader, list[Event]], views: list[bool]
) -> None:
    header, events = log
    projection = Projection(initial_snapshot(header))
    for k, event in enumerate(events):
        projection.fold([event])
        # Views taken after some events and not others: changes pile up between views.
        if views[k % len(views)] or k == len(events) - 1:
            expected = project(header, events[: k + 1])
            assert snapshot_bytes(projection.snapshot()) == snapshot_bytes(expected)


@settings(max_examples=100, deadline=None)
@given(steps=dags, seed=st.integers(0, 2**32 - 1))
def test_ready_steps_kept_incrementally_equal_the_full_scan(
    steps: list[dict[str, Any]], seed: int
) -> None:
    rng = random.Random(seed)
    plan = plan_of(steps)
    statuses = {s.step_id: StepStatus.PENDING for s in plan.steps}
    ready = ReadySteps(plan.steps, statuses)
    for _ in range(4 * len(plan.steps)):
        step_id = rng.choice(plan.step_ids)
        statuses[step_id] = rng.choice(list(StepStatus))
        ready.set_status(step_id, statuses[step_id])
        in_flight = set(rng.sample(plan.step_ids, k=rng.randint(0, len(plan.step_ids))))
        assert ready.ready(in_flight) == ready_steps(plan.steps, statuses, in_flight)


def test_step_lookup_by_id_is_the_first_match_even_when_the_index_is_stale() -> None:
    class Item:
        def __init__(self, step_id: str) -> None:
            self.step_id = step_id

    ids = [f"s{i}" for i in range(100)]
    items = [Item(i) for i in ids]
    assert find_step(items, "s57") is items[57]
    # Same length, first and last id, other order: the remembered positions are checked.
    swapped = [items[0], *reversed(items[1:-1]), items[-1]]
    assert find_step(swapped, "s57") is items[57]
    assert find_step(swapped, "nope") is None
    assert find_step(items, "s3") is items[3]


def _chain(n: int, fan_in: int = 3) -> ExecutionPlan:
    steps = [{"stepId": f"s{i}", "kind": "noop",
              "dependsOn": [f"s{j}" for j in range(max(0, i - fan_in), i)]} for i in range(n)]
    return ExecutionPlan.model_validate({
        "metadata": {"planId": "chain", "planVersion": "1", "schemaVersion": "v1.2"},
        "steps": steps})


def test_a_2000_step_chain_reads_dependency_states_a_bounded_number_of_times_per_edge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = _chain(2000)
    edges = sum(len(s.depends_on) for s in plan.steps)
    reads = 0
    satisfies = StepStatus.__dict__["satisfies_dependency"]

    def counted(status: StepStatus) -> bool:
        nonlocal reads
        reads += 1
        return bool(satisfies.fget(status))

    # Every scheduling decision asks whether a dependency is satisfied; rescanning the plan per
    # event asks it about n^2/2 = 2,000,000 times here; counts kept per edge, about 8 n.
    monkeypatch.setattr(StepStatus, "satisfies_dependency", property(counted))

    async def run() -> StepStatus | str:
        store = MemoryRunStateStore()
        engine = open_engine(ReferenceSettings(), store=store, registry=builtin_registry(),
                             artifacts=MemoryArtifactStore())
        async with Client(engine=engine, store=store, tenant="t", owns_store=True) as client:
            handle = await client.start_run(plan, run_id=f"chain-{uuid.uuid4().hex[:8]}")
            snapshot = await handle.result(timeout=600)
        return snapshot.status

    assert asyncio.run(run()) == "COMPLETED"
    assert 0 < reads <= 10 * (len(plan.steps) + edges)


_ODD_VALUES = [None, True, False, 0, -1, 1, 5.0, 2.5, 1e300, -0.0, 2**53, "", "a", "a\n",
               "x" * 201, "a|b", "\u0085", "\U0001f600", "\ud800", [], ["a"], [1], {}, {"a": 1}]
_PATHS = [("metadata", "planId"), ("metadata", "operatorTimeoutMs"), ("metadata", "description"),
          ("metadata", "failurePolicy"), ("metadata", "requiresApproval"),
          ("metadata", "requiresCapabilities"), ("metadata", "extra"), ("steps", 0, "stepId"),
          ("steps", 0, "kind"), ("steps", 0, "dependsOn"), ("steps", 0, "params"),
          ("steps", 0, "costHint"), ("steps", 0, "retryPolicy"), ("steps", 0, "timeoutMs"),
          ("steps", 1, "dependsOn", 0), ("steps", 0, "unknown")]


@settings(max_examples=300, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(_PATHS), st.sampled_from(_ODD_VALUES)),
                        max_size=3))
def test_the_compiled_schema_gate_never_accepts_what_jsonschema_refuses(
    changes: list[tuple[tuple[Any, ...], Any]],
) -> None:
    from dvt_engine.planning.checks import _plan_validator, _surely_valid

    doc: dict[str, Any] = {
        "metadata": {"planId": "p", "planVersion": "1", "schemaVersion": "v1.2"},
        "steps": [{"stepId": "a", "kind": "noop"},
                  {"stepId": "b", "kind": "noop", "dependsOn": ["a"]}]}
    for path, value in changes:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    if _surely_valid(doc):
        assert not list(_plan_validator().iter_errors(doc))
