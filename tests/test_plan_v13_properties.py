"""Property test: random bounded v1.3 plans on the reference engine keep the v1.3 invariants.

Each plan is a random DAG of echo and short sleep steps with a random ``maxParallel``, random
concurrency groups and limits, random any/quorum joins, random conditions over earlier echo
outputs and params, and a random skipRule. From the run's event log (log order):

- at no point are more than ``maxParallel`` steps (or more than a group's limit) started and not
  yet settled;
- every step settles exactly once (one StepCompleted or one StepSkipped; nothing fails);
- every step with a condition was decided once (started once, or skipped once), and the
  decision equals the condition evaluated independently over the outputs in the log.

Some plans have a bounded ``forEach`` step over a param list (0-3 items): its children count
against the limits like any step (the template itself holds no slot), each settles once, and the
template completes after them with their outputs in item order.

The same plans also go straight through the interpreter with steps settling in random orders
(many more examples): limits hold after every move and each condition is evaluated once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import cel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_v13_strategies import bounded_plans

from contract_tests.catalogue import as_scenario
from contract_tests.driver import execute_scenario
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.interpreter import Finish, RunInterpreter, StartStep
from dvt_engine.models.events import Event
from dvt_engine.models.run import StepStatus
from dvt_engine.planning import validate_plan_document
from dvt_engine.rules import conditions as condition_rules
from dvt_engine.stores.memory import MemoryRunStateStore


async def _run(document: dict[str, Any]) -> list[Event]:
    store = MemoryRunStateStore()
    engine = ReferenceEngine(store)
    try:
        outcome = await execute_scenario(as_scenario(document), engine, store, timeout=30.0)
    finally:
        await engine.close()
    assert outcome.error is None, outcome.error
    return await store.fetch_events(outcome.tenant_id, outcome.run_id)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bounded_plans())
def test_random_bounded_plans_keep_the_v13_invariants(document: dict[str, Any]) -> None:
    events = asyncio.run(_run(document))
    steps = {s["stepId"]: s for s in document["steps"]}
    templates = {sid for sid, s in steps.items() if "forEach" in s}
    expanded = {e.step_id for e in events if e.event_type == "StepExpanded"}
    assert expanded <= templates
    for sid in expanded:
        for i, _ in enumerate(document["params"]["items"]):
            steps[f"{sid}[{i}]"] = {"stepId": f"{sid}[{i}]",
                                    "concurrencyGroup": steps[sid].get("concurrencyGroup")}
    limits = document["metadata"]["concurrencyGroups"]
    cap = document["metadata"]["maxParallel"]
    running: set[str] = set()
    started: Counter[str] = Counter()
    settled: Counter[str] = Counter()
    outputs: dict[str, Any] = {}
    skipped_by_condition: set[str] = set()
    for event in events:
        sid = event.step_id
        if event.event_type == "StepStarted":
            assert sid is not None
            started[sid] += 1
            if sid not in templates:  # a forEach template holds no slot
                running.add(sid)
            assert len(running) <= cap, f"more than maxParallel {cap} running: {running}"
            per_group = Counter(steps[s].get("concurrencyGroup") for s in running)
            for group, limit in limits.items():
                assert per_group[group] <= limit, f"group {group} over {limit}: {running}"
        elif event.event_type in ("StepCompleted", "StepSkipped", "StepFailed"):
            assert sid is not None
            assert event.event_type != "StepFailed", event.payload
            running.discard(sid)
            settled[sid] += 1
            if event.event_type == "StepCompleted":
                outputs[sid] = event.payload.get("output")
            elif str(event.payload.get("reason", "")).startswith("condition"):
                skipped_by_condition.add(sid)
    assert events[-1].event_type == "RunCompleted"
    assert settled == Counter(dict.fromkeys(steps, 1)), "every step settles exactly once"
    assert all(n == 1 for n in started.values())
    for sid in expanded:  # the fan-in reads the children's outputs in item order
        items = document["params"]["items"]
        assert outputs[sid] == [outputs.get(f"{sid}[{i}]") for i in range(len(items))]
    for sid, step in steps.items():
        if "when" not in step:
            assert sid not in skipped_by_condition
            continue
        decided = started[sid] + (sid in skipped_by_condition)
        if decided == 0:
            continue  # skipped before its condition was due (cascade or a join's loser)
        assert decided == 1, f"{sid}'s condition was decided {decided} times"
        assert bool(started[sid]) == _condition(step["when"], document["params"], outputs), sid


def _condition(expression: str, params: dict[str, Any], outputs: dict[str, Any]) -> bool:
    """The condition evaluated apart from dvt: a skipped step has no output, and a condition
    that cannot be evaluated counts as false."""
    context = {"params": params, "steps": {
        f"s{i}": {"output": outputs.get(f"s{i}")} for i in range(10)}}
    try:
        return cel.evaluate(expression, context) is True
    except (KeyError, TypeError, ValueError, RuntimeError):
        return False


@settings(max_examples=150, deadline=None)
@given(bounded_plans(), st.randoms(use_true_random=False))
def test_the_interpreter_keeps_limits_in_any_settlement_order(
    document: dict[str, Any], rnd: Any
) -> None:
    """The same invariants straight on the interpreter, steps settling in a random order."""
    plan = validate_plan_document(document)
    evaluations: Counter[str] = Counter()
    real_context = condition_rules.condition_context

    def counting(plan_: Any, step_id: str, *args: Any) -> dict[str, Any]:
        evaluations[step_id] += 1
        return real_context(plan_, step_id, *args)

    interp = RunInterpreter(plan)
    limits = plan.metadata.group_limits
    started: Counter[str] = Counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(condition_rules, "condition_context", counting)
        commands = interp.begin()
        while not any(isinstance(c, Finish) for c in commands):
            started.update(c.step_id for c in commands if isinstance(c, StartStep))
            running = interp.in_flight()
            assert running, "the run stalled"
            assert len(running) <= (plan.metadata.max_parallel or len(running))
            per_group = Counter(interp.spec(s).concurrency_group for s in running)
            assert all(per_group[g] <= n for g, n in limits.items())
            step_id = rnd.choice(running)
            commands = interp.settle(step_id, 1, "succeeded", output={"v": rnd.randint(0, 9)})
    assert all(n == 1 for n in started.values())
    assert all(n == 1 for n in evaluations.values())
    assert set(evaluations) <= {s.step_id for s in plan.steps if s.when}
    for sid, items in interp.expansions.items():  # children settled once each, in item order
        assert interp.outputs.get(sid, [None] * len(items)) is not None
        assert all(started[f"{sid}[{i}]"] <= 1 for i in range(len(items)))
    assert all(st_.status in (StepStatus.SUCCESS, StepStatus.SKIPPED)
               for st_ in interp.steps.values())
