"""Property tests of the shared scheduler: random DAGs always finish, in dependency order.

The scheduler's pure functions are checked directly, and through the RunInterpreter that every
engine drives: steps settle in a random order with random failures, an operator retries or skips
what failed, and the run must always end, with every StepStart after its dependencies settled.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dvt_engine.interpreter import (
    Command,
    Finish,
    RunInterpreter,
    StartStep,
    StartTimer,
    WriteRunEvent,
    WriteStepEvent,
)
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import StepStatus
from dvt_engine.models.signals import SignalType
from dvt_engine.models.snapshot import StepError
from dvt_engine.scheduler import blocked_steps, ready_steps, steps_in_topological_order
from dvt_engine.statemachine import RUN_AWAITING_OPERATOR


def _dag(n: int, edges: list[tuple[int, int]], names: list[int]) -> list[dict[str, Any]]:
    """Steps in a shuffled plan order; edges only point from a lower to a higher rank."""
    deps: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in edges:
        lo, hi = sorted((a % n, b % n))
        if lo != hi:
            deps[hi].add(lo)
    order = sorted(range(n), key=lambda i: names[i])  # plan order need not be topological
    return [{"stepId": f"s{i}", "kind": "noop", "dependsOn": [f"s{d}" for d in sorted(deps[i])]}
            for i in order]


dags = st.integers(min_value=1, max_value=25).flatmap(
    lambda n: st.builds(
        _dag,
        st.just(n),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n),
        st.permutations(list(range(n))),
    )
)


def plan_of(steps: list[dict[str, Any]], policy: str = "failFast") -> ExecutionPlan:
    return ExecutionPlan.model_validate({
        "metadata": {"planId": "prop", "planVersion": "1", "schemaVersion": "v1.2",
                     "failurePolicy": policy},
        "steps": steps,
    })


@settings(max_examples=100, deadline=None)
@given(steps=dags)
def test_topological_order_is_valid_and_stable(steps: list[dict[str, Any]]) -> None:
    plan = plan_of(steps)
    order = [s.step_id for s in steps_in_topological_order(plan.steps)]
    assert sorted(order) == sorted(plan.step_ids)
    position = {sid: i for i, sid in enumerate(order)}
    for spec in plan.steps:
        for dep in spec.depends_on:
            assert position[dep] < position[spec.step_id]
    # Stable: steps without dependencies keep their plan order.
    roots = [s.step_id for s in plan.steps if not s.depends_on]
    assert [sid for sid in order if sid in roots] == roots


@settings(max_examples=100, deadline=None)
@given(steps=dags, seed=st.integers(0, 2**32 - 1))
def test_ready_steps_drive_any_dag_to_the_end_in_dependency_order(
    steps: list[dict[str, Any]], seed: int
) -> None:
    """Completing any non-empty subset of the ready steps, repeatedly, finishes every DAG."""
    rng = random.Random(seed)
    plan = plan_of(steps)
    statuses = {sid: StepStatus.PENDING for sid in plan.step_ids}
    finished_order: list[str] = []
    for _ in range(len(plan.steps) + 1):
        ready = ready_steps(plan.steps, statuses)
        if not ready:
            break
        plan_position = {sid: i for i, sid in enumerate(plan.step_ids)}
        assert ready == sorted(ready, key=plan_position.__getitem__)  # plan-order tie-break
        chosen = rng.sample(ready, rng.randint(1, len(ready)))
        for sid in chosen:
            spec = plan.step(sid)
            assert all(statuses[d].satisfies_dependency for d in spec.depends_on)
            statuses[sid] = rng.choice([StepStatus.SUCCESS, StepStatus.SKIPPED])
            finished_order.append(sid)
    assert all(s.satisfies_dependency for s in statuses.values())
    assert sorted(finished_order) == sorted(plan.step_ids)


@settings(max_examples=100, deadline=None)
@given(steps=dags, seed=st.integers(0, 2**32 - 1))
def test_blocked_steps_are_exactly_the_pending_descendants_of_failures(
    steps: list[dict[str, Any]], seed: int
) -> None:
    rng = random.Random(seed)
    plan = plan_of(steps)
    statuses = {sid: rng.choice(list(StepStatus)) for sid in plan.step_ids}
    blocked = set(blocked_steps(plan.steps, statuses))
    children: dict[str, list[str]] = {sid: [] for sid in plan.step_ids}
    for spec in plan.steps:
        for dep in spec.depends_on:
            children[dep].append(spec.step_id)
    reach: set[str] = set()
    frontier = [sid for sid, st_ in statuses.items() if st_ == StepStatus.FAILED]
    while frontier:
        sid = frontier.pop()
        for child in children[sid]:
            if statuses[child] == StepStatus.PENDING and child not in reach:
                reach.add(child)
                frontier.append(child)
    assert blocked == reach


@dataclass
class Simulation:
    """A driver that settles steps in random order with random failures."""

    plan: ExecutionPlan
    rng: random.Random
    fail_rate: float
    interp: RunInterpreter = field(init=False)
    settled: dict[str, StepStatus] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    starts: list[tuple[str, int]] = field(default_factory=list)
    finish: Finish | None = None
    awaiting_operator: bool = False
    first_final_failure_at: int | None = None

    def __post_init__(self) -> None:
        self.interp = RunInterpreter(self.plan)

    def process(self, commands: list[Command]) -> None:
        batch = [c.step_id for c in commands if isinstance(c, StartStep)]
        position = {sid: i for i, sid in enumerate(self.plan.step_ids)}
        assert batch == sorted(batch, key=position.__getitem__)
        for command in commands:
            assert self.finish is None, "a command after the run finished"
            if isinstance(command, StartStep):
                spec = self.plan.step(command.step_id)
                for dep in spec.depends_on:
                    assert self.settled.get(dep) in (StepStatus.SUCCESS, StepStatus.SKIPPED), (
                        f"{command.step_id} started before {dep} settled")
                assert command.step_id not in self.in_flight
                assert (command.step_id, command.logical_attempt_id) not in self.starts
                self.in_flight[command.step_id] = command.logical_attempt_id
                self.starts.append((command.step_id, command.logical_attempt_id))
            elif isinstance(command, WriteStepEvent) and command.event_type == "StepSkipped":
                self.settled[command.step_id] = StepStatus.SKIPPED
            elif isinstance(command, WriteRunEvent) and command.event_type == RUN_AWAITING_OPERATOR:
                self.awaiting_operator = True
            elif isinstance(command, Finish):
                self.finish = command
            else:
                assert isinstance(command, StartTimer | WriteRunEvent), command

    def settle_one(self) -> None:
        step_id = self.rng.choice(sorted(self.in_flight))
        attempt = self.in_flight.pop(step_id)
        # Later attempts always succeed, so an operator's retry can always get the run through.
        if attempt == 1 and self.rng.random() < self.fail_rate:
            self.settled[step_id] = StepStatus.FAILED
            if self.first_final_failure_at is None:
                self.first_final_failure_at = len(self.starts)
            self.process(self.interp.step_settled(
                step_id, attempt, "failed", StepError(code="BOOM", message="boom")))
        else:
            self.settled[step_id] = StepStatus.SUCCESS
            self.process(self.interp.step_settled(step_id, attempt, "succeeded"))

    def operator_acts(self) -> None:
        failed = sorted(sid for sid, s in self.settled.items() if s == StepStatus.FAILED)
        assert failed, "awaiting an operator with no failed step"
        step_id = self.rng.choice(failed)
        kind = self.rng.choice([SignalType.RETRY_STEP, SignalType.SKIP_STEP])
        self.awaiting_operator = False
        if kind == SignalType.RETRY_STEP:
            del self.settled[step_id]
        self.process(self.interp.signal_accepted(kind, {"stepId": step_id}, signal_id="op"))

    def run(self) -> Finish:
        self.process(self.interp.begin())
        for _ in range(20 * len(self.plan.steps) + 10):
            if self.finish is not None:
                return self.finish
            if self.in_flight:
                self.settle_one()
            elif self.awaiting_operator:
                self.operator_acts()
            else:
                raise AssertionError("the run is stuck: nothing in flight and no finish")
        raise AssertionError("the run did not finish")


@settings(max_examples=100, deadline=None)
@given(steps=dags, seed=st.integers(0, 2**32 - 1), fail_rate=st.sampled_from([0.0, 0.1, 0.4]))
def test_fail_fast_runs_always_finish_in_dependency_order(
    steps: list[dict[str, Any]], seed: int, fail_rate: float
) -> None:
    sim = Simulation(plan_of(steps, "failFast"), random.Random(seed), fail_rate)
    finish = sim.run()
    failed = [sid for sid, s in sim.settled.items() if s == StepStatus.FAILED]
    if failed:
        assert finish.event_type == "RunFailed"
        assert finish.payload["stepId"] in failed
        # Nothing new is scheduled after the first final failure.
        assert len(sim.starts) == sim.first_final_failure_at
    else:
        assert finish.event_type == "RunCompleted"
        assert sorted(sid for sid, _ in sim.starts) == sorted(sim.plan.step_ids)
    assert not sim.in_flight  # running steps finished before the run did


@settings(max_examples=100, deadline=None)
@given(steps=dags, seed=st.integers(0, 2**32 - 1), fail_rate=st.sampled_from([0.1, 0.5]))
def test_await_operator_runs_always_complete_when_an_operator_acts(
    steps: list[dict[str, Any]], seed: int, fail_rate: float
) -> None:
    sim = Simulation(plan_of(steps, "awaitOperator"), random.Random(seed), fail_rate)
    finish = sim.run()
    assert finish.event_type == "RunCompleted"
    assert all(sim.settled[sid] in (StepStatus.SUCCESS, StepStatus.SKIPPED)
               for sid in sim.plan.step_ids)
    assert finish.payload["succeeded"] + finish.payload["skipped"] == len(sim.plan.steps)
    retried = {sid for sid, attempt in sim.starts if attempt == 2}
    assert all((sid, 1) in sim.starts for sid in retried)


# --- random DAGs on the reference engine, compared by the parity harness --------------------


def _engine_plan(steps: list[dict[str, Any]], kinds: list[int]) -> dict[str, Any]:
    """The random DAG with real kinds: noop, echo, a flaky fail that its retry absorbs, and
    (kind 3) a fail that always fails."""
    out = []
    for step, k in zip(steps, kinds, strict=False):
        spec = dict(step)
        if k == 1:
            spec.update(kind="echo", params={"id": step["stepId"]})
        elif k == 2:
            spec.update(kind="fail", params={"code": "FLAKY", "failTimes": 1},
                        retry={"maxAttempts": 2, "initialIntervalMs": 1, "maxIntervalMs": 1})
        elif k == 3:
            spec.update(kind="fail", params={"code": "BROKEN", "retryable": False})
        out.append(spec)
    return {"metadata": {"planId": "random-dag", "planVersion": "1", "schemaVersion": "v1.2"},
            "steps": out}


def test_random_dags_on_two_reference_engines_are_equivalent() -> None:
    """Random plans (flaky and broken steps included) run to the end on two reference engines
    with equivalent results: same checksum, same events, DAG order on each side."""
    import asyncio

    from contract_tests.parity import run_parity
    from contract_tests.scenarios import EngineSide, Scenario
    from dvt_engine.engines.reference import ReferenceEngine
    from dvt_engine.stores.memory import MemoryRunStateStore

    # One loop and one pair of engines for every example: building an engine is the slow part.
    loop = asyncio.new_event_loop()
    stores = [MemoryRunStateStore(), MemoryRunStateStore()]
    sides = [EngineSide(ReferenceEngine(store), store) for store in stores]

    @settings(max_examples=40, deadline=None)
    @given(steps=dags, kinds=st.lists(st.sampled_from([0, 0, 1, 1, 2, 3]), min_size=25,
                                      max_size=25))
    def check(steps: list[dict[str, Any]], kinds: list[int]) -> None:
        plan = _engine_plan(steps, kinds)
        broken = {s["stepId"] for s in plan["steps"]
                  if s.get("params", {}).get("code") == "BROKEN"}
        scenario = Scenario.from_document(
            {"scenarioId": "random", "plan": plan, "timeoutSeconds": 30})
        report = loop.run_until_complete(run_parity(scenario, sides[0], sides[1]))
        assert report.equal, report.summary()  # includes DAG order on each side
        newest = loop.run_until_complete(stores[0].list_runs("acme", limit=1))[0]
        assert newest.status == ("FAILED" if broken else "COMPLETED")

    try:
        check()
    finally:
        for side in sides:
            loop.run_until_complete(side.engine.close())
        loop.close()
