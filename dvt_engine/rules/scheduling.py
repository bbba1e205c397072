"""Scheduling: which steps start now, and when a run has nothing left to do.

A run starts new steps only while it is RUNNING, not being cancelled and not failing under
failFast; then every PENDING step whose dependencies are SUCCESS or SKIPPED starts, in the ready
order - priority, then plan order (the DAG rules themselves are in :mod:`dvt_engine.scheduler`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from dvt_engine.models.run import RunStatus, StepStatus
from dvt_engine.scheduler import ReadySteps, StepNode, ready_steps


def starts_new_steps(status: RunStatus, *, cancel_requested: bool, failing_fast: bool) -> bool:
    """True when a run in this state may start steps at all."""
    return status == RunStatus.RUNNING and not cancel_requested and not failing_fast


def steps_to_start(
    steps: Sequence[StepNode],
    statuses: Mapping[str, StepStatus],
    in_flight: Collection[str],
) -> list[str]:
    """The steps to start now in a run that starts steps: ready ones, in plan order (callers
    with step priorities use ``steps_to_start_now``)."""
    return ready_steps(steps, statuses, in_flight)


def steps_to_start_now(ready: ReadySteps, in_flight: Collection[str]) -> list[str]:
    """``steps_to_start`` for the statuses kept in ``ready`` (the same steps, same order)."""
    return ready.ready(in_flight)


def is_complete(statuses: Mapping[str, StepStatus]) -> bool:
    """True when every step is SUCCESS or SKIPPED: the run completes."""
    return all(s.satisfies_dependency for s in statuses.values())


def completion_payload(statuses: Mapping[str, StepStatus]) -> dict[str, int]:
    """RunCompleted's payload: how many steps succeeded and how many were skipped."""
    values = list(statuses.values())
    return {"succeeded": values.count(StepStatus.SUCCESS),
            "skipped": values.count(StepStatus.SKIPPED)}
