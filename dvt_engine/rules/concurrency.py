"""Bounded concurrency (plan v1.3): ``metadata.maxParallel`` and per-group limits.

Among the ready steps the run starts, in plan order, each one that fits: fewer than
``maxParallel`` steps in flight (waiting approval gates included: a slot is held from StepStarted
until the step settles) and fewer than its ``concurrencyGroup``'s limit in flight in that group.
A step that does not fit waits; one later in plan order that fits may start before it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from dvt_engine.models.plan import ExecutionPlan


def is_bounded(plan: ExecutionPlan) -> bool:
    """True when the plan limits how many steps run at once."""
    return plan.metadata.max_parallel is not None or bool(plan.metadata.group_limits)


def within_limits(
    plan: ExecutionPlan, ready: Sequence[str], in_flight: Iterable[str]
) -> list[str]:
    """The ready steps that may start now, in plan order, given what is already in flight."""
    if not is_bounded(plan):
        return list(ready)
    limits = plan.metadata.group_limits
    running = list(in_flight)
    total = len(running)
    per_group = Counter(plan.step(s).concurrency_group for s in running)
    chosen: list[str] = []
    for step_id in ready:
        cap = plan.metadata.max_parallel
        if cap is not None and total >= cap:
            break
        group = plan.step(step_id).concurrency_group
        if group is not None and group in limits and per_group[group] >= limits[group]:
            continue
        chosen.append(step_id)
        total += 1
        per_group[group] += 1
    return chosen
