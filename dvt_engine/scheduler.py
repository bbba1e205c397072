"""The DAG rules every engine shares: which steps are ready, and which can never run.

Pure functions over a plan outline and the current step states. Ready steps come in the ready
order: a higher ``priority`` first (plan v1.3; absent is 0), then plan order, so every engine
starts the same steps in the same order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from dvt_engine.models.run import StepStatus


class StepNode(Protocol):
    """Anything with a step id and its dependencies (StepSpec, StepOutline)."""

    @property
    def step_id(self) -> str: ...
    @property
    def depends_on(self) -> tuple[str, ...]: ...


def dependencies_satisfied(node: StepNode, statuses: Mapping[str, StepStatus]) -> bool:
    """True when every dependency of ``node`` is SUCCESS or SKIPPED."""
    return all(statuses[dep].satisfies_dependency for dep in node.depends_on)


def ready_order(steps: Sequence[StepNode],
                priorities: Mapping[str, int] | None = None) -> dict[str, int]:
    """Each step's rank in the ready order: higher priority first, then plan order."""
    prio = priorities or {}
    ranked = sorted(range(len(steps)), key=lambda i: (-prio.get(steps[i].step_id, 0), i))
    return {steps[i].step_id: rank for rank, i in enumerate(ranked)}


def ready_steps(
    steps: Sequence[StepNode],
    statuses: Mapping[str, StepStatus],
    in_flight: Collection[str] = (),
    priorities: Mapping[str, int] | None = None,
) -> list[str]:
    """PENDING steps, not already in flight, whose dependencies are satisfied; ready order."""
    found = [
        s.step_id
        for s in steps
        if statuses[s.step_id] == StepStatus.PENDING
        and s.step_id not in in_flight
        and dependencies_satisfied(s, statuses)
    ]
    if not priorities:
        return found
    return sorted(found, key=ready_order(steps, priorities).__getitem__)


def blocked_steps(steps: Sequence[StepNode], statuses: Mapping[str, StepStatus]) -> list[str]:
    """PENDING steps that cannot run until an operator acts: a dependency (transitively) FAILED."""
    blocked: set[str] = set()
    for s in steps_in_topological_order(steps):
        if statuses[s.step_id] != StepStatus.PENDING:
            continue
        if any(statuses[d] == StepStatus.FAILED or d in blocked for d in s.depends_on):
            blocked.add(s.step_id)
    return [s.step_id for s in steps if s.step_id in blocked]


def steps_in_topological_order(steps: Sequence[StepNode]) -> list[StepNode]:
    """A topological order of a valid DAG, stable with respect to plan order."""
    by_id = {s.step_id: s for s in steps}
    remaining = {s.step_id: len(s.depends_on) for s in steps}
    dependents: dict[str, list[str]] = {s.step_id: [] for s in steps}
    for s in steps:
        for dep in s.depends_on:
            dependents[dep].append(s.step_id)
    position = {s.step_id: i for i, s in enumerate(steps)}
    ready = sorted((sid for sid, n in remaining.items() if n == 0), key=position.__getitem__)
    order: list[StepNode] = []
    while ready:
        sid = ready.pop(0)
        order.append(by_id[sid])
        released = []
        for child in dependents[sid]:
            remaining[child] -= 1
            if remaining[child] == 0:
                released.append(child)
        ready = sorted([*ready, *released], key=position.__getitem__)
    if len(order) != len(steps):
        raise ValueError("the plan's steps contain a cycle")
    return order


class ReadySteps:
    """``ready_steps`` kept up to date step by step instead of recomputed over the plan.

    Per step it counts the dependencies not yet SUCCESS or SKIPPED; a status change touches only
    the changed step and its direct dependents, so a run pays per event for the DAG edges the
    event affects. ``ready(in_flight)`` equals ``ready_steps(steps, statuses, in_flight)`` for the
    statuses reported through ``set_status``; ``priorities`` (plan v1.3) order it as there.
    """

    def __init__(
        self,
        steps: Sequence[StepNode],
        statuses: Mapping[str, StepStatus],
        *,
        needed: Mapping[str, int] | None = None,
        skipped_satisfies: bool = True,
        priorities: Mapping[str, int] | None = None,
    ) -> None:
        self.position = {s.step_id: i for i, s in enumerate(steps)}
        # The ready order; plan order itself when no step has a priority.
        self._rank = ready_order(steps, priorities) if priorities else self.position
        self._dependents: dict[str, list[str]] = {s.step_id: [] for s in steps}
        for s in steps:
            for dep in s.depends_on:
                self._dependents[dep].append(s.step_id)
        self._skipped_satisfies = skipped_satisfies
        self._status = {s.step_id: statuses[s.step_id] for s in steps}
        # How many dependencies must be satisfied (plan v1.3 joins); all of them by default.
        self._allowed_unsatisfied = {
            s.step_id: len(s.depends_on) - min((needed or {}).get(s.step_id, len(s.depends_on)),
                                               len(s.depends_on))
            for s in steps
        }
        self._unsatisfied = {
            s.step_id: sum(1 for d in s.depends_on if not self._satisfies(statuses[d]))
            for s in steps
        }
        self._candidates = {sid for sid in self._status if self._is_candidate(sid)}

    def _satisfies(self, status: StepStatus) -> bool:
        if status == StepStatus.SKIPPED:
            return self._skipped_satisfies
        return status.satisfies_dependency

    def _is_candidate(self, step_id: str) -> bool:
        return (self._status[step_id] == StepStatus.PENDING
                and self._unsatisfied[step_id] <= self._allowed_unsatisfied[step_id])

    def _recheck(self, step_id: str) -> None:
        if self._is_candidate(step_id):
            self._candidates.add(step_id)
        else:
            self._candidates.discard(step_id)

    def set_status(self, step_id: str, status: StepStatus) -> None:
        """Record a step's new status."""
        old = self._status[step_id]
        if old == status:
            return
        self._status[step_id] = status
        if self._satisfies(old) != self._satisfies(status):
            change = -1 if self._satisfies(status) else 1
            for child in self._dependents[step_id]:
                self._unsatisfied[child] += change
                self._recheck(child)
        self._recheck(step_id)

    def ready(self, in_flight: Collection[str] = ()) -> list[str]:
        """PENDING steps, not in flight, whose dependencies are satisfied; ready order."""
        return sorted((s for s in self._candidates if s not in in_flight),
                      key=self._rank.__getitem__)
