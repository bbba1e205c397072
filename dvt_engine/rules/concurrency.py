"""Bounded concurrency (plan v1.3): ``metadata.maxParallel`` and per-group limits.

Among the ready steps the run starts, in plan order, each one that fits: fewer than
``maxParallel`` steps in flight (waiting approval gates included: a slot is held from StepStarted
until the step settles) and fewer than its ``concurrencyGroup``'s limit in flight in that group.
A step that does not fit waits; one later in plan order that fits may start before it. A step
with a condition is decided (its condition evaluated) only once it fits, so a condition is
evaluated exactly once, and a false one never holds a slot.
"""

from __future__ import annotations

from collections.abc import Collection

from dvt_engine.models.plan import ExecutionPlan


def is_bounded(plan: ExecutionPlan) -> bool:
    """True when the plan limits how many steps run at once."""
    return plan.metadata.max_parallel is not None or bool(plan.metadata.group_limits)


def fits(plan: ExecutionPlan, step_id: str, in_flight: Collection[str]) -> bool:
    """True when ``step_id`` may start beside the steps in flight (maxParallel, its group)."""
    cap = plan.metadata.max_parallel
    if cap is not None and len(in_flight) >= cap:
        return False
    group = plan.step(step_id).concurrency_group
    limit = plan.metadata.group_limits.get(group) if group is not None else None
    if limit is None:
        return True
    return sum(1 for s in in_flight if plan.step(s).concurrency_group == group) < limit
