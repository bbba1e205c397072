"""Bounded concurrency (plan v1.3): ``metadata.maxParallel``, per-group and per-class limits.

Among the ready steps the run starts, in the ready order (priority, then plan order), each one
that fits: fewer than ``maxParallel`` steps in flight (waiting approval gates included: a slot is
held from StepStarted until the step settles), fewer than its ``concurrencyGroup``'s limit in
flight in that group and fewer than its ``resourceClass``'s ``maxParallel`` in that class.
A step that does not fit waits; one later in plan order that fits may start before it. A step
with a condition is decided (its condition evaluated) only once it fits, so a condition is
evaluated exactly once, and a false one never holds a slot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping

from dvt_engine.models.plan import ExecutionPlan


def is_bounded(plan: ExecutionPlan) -> bool:
    """True when the plan limits how many steps run at once."""
    meta = plan.metadata
    return meta.max_parallel is not None or bool(meta.group_limits) or bool(meta.class_limits)


def orders_by_priority(plan: ExecutionPlan) -> bool:
    """True when some step's priority changes the ready order (plan v1.3)."""
    return any(s.priority for s in plan.steps)


def step_priorities(plan: ExecutionPlan) -> dict[str, int]:
    """Each step's priority where it is not 0 (the ready order's first key)."""
    return {s.step_id: s.priority for s in plan.steps if s.priority}


def step_classes(plan: ExecutionPlan) -> dict[str, str | None]:
    """Each step's resource class (None when it has none)."""
    return {s.step_id: s.resource_class for s in plan.steps}


def step_groups(plan: ExecutionPlan) -> dict[str, str | None]:
    """Each step's concurrency group (None when it has none)."""
    return {s.step_id: s.concurrency_group for s in plan.steps}


class Slots:
    """The free slots of a run at one moment: ``maxParallel`` overall, each group's limit and
    each resource class's limit."""

    def __init__(self, plan: ExecutionPlan, groups: Mapping[str, str | None],
                 in_flight: Collection[str],
                 classes: Mapping[str, str | None] | None = None) -> None:
        self._cap = plan.metadata.max_parallel
        self._limits = plan.metadata.group_limits
        self._class_limits = plan.metadata.class_limits
        self._groups = groups
        self._classes = classes or {}
        self._total = len(in_flight)
        self._per_group = Counter(groups[s] for s in in_flight)
        self._per_class = Counter(self._classes.get(s) for s in in_flight)

    @property
    def full(self) -> bool:
        """True when ``maxParallel`` steps are in flight: nothing else may start."""
        return self._cap is not None and self._total >= self._cap

    def fits(self, step_id: str) -> bool:
        """True when ``step_id`` may start now."""
        if self.full:
            return False
        group = self._groups[step_id]
        limit = self._limits.get(group) if group is not None else None
        if limit is not None and self._per_group[group] >= limit:
            return False
        cls = self._classes.get(step_id)
        class_limit = self._class_limits.get(cls) if cls is not None else None
        return class_limit is None or self._per_class[cls] < class_limit

    def take(self, step_id: str) -> None:
        """Count ``step_id`` as started."""
        self._total += 1
        self._per_group[self._groups[step_id]] += 1
        self._per_class[self._classes.get(step_id)] += 1
