"""Joins and skip propagation (plan v1.3).

A step's ``join`` says how many of its dependencies must be satisfied before it is ready:
``all`` (the default), ``any`` (one) or ``quorum`` (``count``). A dependency is satisfied when it
is SUCCESS, or SKIPPED under the plan's ``skipRule: satisfy`` (the default). Under
``skipRule: cascade`` a SKIPPED dependency is not satisfied, and a PENDING step whose join can no
longer be met because of skipped dependencies is skipped itself.

When an ``any``/``quorum`` join with ``losers: skip`` starts its step, its dependencies that
have not started yet are skipped; running ones finish (``losers: finish``, the default, lets the
unstarted ones run too). With ``losers: cancel`` the running ones are skipped too, at that same
decision, and their engine is asked to stop the attempt: the log says SKIPPED whenever the stop
reaches the worker, and whatever the attempt comes to afterwards is discarded (no outcome event,
no failure, no retry). A failing dependency that is not cancelled is a step failure like any
other: the plan's failurePolicy applies even when the join was already met.
"""

from __future__ import annotations

from collections.abc import Mapping

from dvt_engine.models.plan import ExecutionPlan, StepSpec
from dvt_engine.models.run import StepStatus


def needed(step: StepSpec) -> int:
    """How many dependencies must be satisfied for the step to be ready."""
    join = step.join_spec
    deps = len(step.depends_on)
    if join.mode == "any":
        return min(1, deps)
    if join.mode == "quorum":
        return min(join.count or deps, deps)
    return deps


def needed_counts(plan: ExecutionPlan) -> dict[str, int]:
    """``needed`` of every step whose join is not ``all`` (the others need every dependency)."""
    return {s.step_id: needed(s) for s in plan.steps if s.join is not None}


def uses_joins_or_cascade(plan: ExecutionPlan) -> bool:
    """True when readiness differs from v1.2's (some join, or skipRule cascade)."""
    return plan.metadata.cascades_skips or any(s.join is not None for s in plan.steps)


def cascaded(plan: ExecutionPlan, statuses: Mapping[str, StepStatus],
             in_flight: set[str]) -> list[tuple[str, list[str]]]:
    """PENDING steps that can never run because of skipped dependencies (skipRule cascade),
    with those dependencies; plan order."""
    if not plan.metadata.cascades_skips:
        return []
    found = []
    for step in plan.steps:
        if statuses[step.step_id] != StepStatus.PENDING or step.step_id in in_flight:
            continue
        skipped = [d for d in step.depends_on if statuses[d] == StepStatus.SKIPPED]
        if skipped and len(step.depends_on) - len(skipped) < needed(step):
            found.append((step.step_id, skipped))
    return found


def losers_to_skip(step: StepSpec, statuses: Mapping[str, StepStatus],
                   in_flight: set[str]) -> list[str]:
    """The dependencies a starting any/quorum join with ``losers: skip`` or ``cancel`` skips
    because they have not started."""
    join = step.join_spec
    if join.mode == "all" or join.losers == "finish":
        return []
    return [d for d in step.depends_on
            if statuses[d] == StepStatus.PENDING and d not in in_flight]


def losers_to_cancel(step: StepSpec, statuses: Mapping[str, StepStatus],
                     in_flight: set[str]) -> list[str]:
    """The running dependencies a starting any/quorum join with ``losers: cancel`` skips and
    stops (``statuses`` shows a loser already being cancelled as SKIPPED)."""
    join = step.join_spec
    if join.mode == "all" or join.losers != "cancel":
        return []
    return [d for d in step.depends_on
            if statuses[d] == StepStatus.RUNNING and d in in_flight]


def loser_reason(step_id: str) -> str:
    """StepSkipped's reason for a join loser that had not started."""
    return f"join of {step_id} already met"


def cancelled_loser_reason(step_id: str) -> str:
    """StepSkipped's reason for a running join loser (``losers: cancel``), also the reason its
    attempt is asked to stop with."""
    return f"join of {step_id} already met; cancelled while running"
