"""Stage 7 of plan validation: the v1.3 flow rules (joins, concurrency groups, conditions).

Run on the model once the DAG is known to be sound: a quorum count the dependencies can meet,
a join only on a step with dependencies, a limit for every group a step names, and conditions
that compile and name only steps settled before theirs (rules.conditions).
"""

from __future__ import annotations

from dvt_engine.errors import ErrorCode
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.planning.problems import Problem, safe
from dvt_engine.rules.conditions import condition_problems


def _join_problem(i: int, step_id: str, problem: str, message: str, field: str,
                  **details: object) -> Problem:
    return Problem(ErrorCode.PLAN_JOIN_INVALID, safe(message), path=f"/steps/{i}/{field}",
                   step_id=step_id, details={"rule": problem, "stepId": step_id, **details})


def flow_problems(plan: ExecutionPlan) -> list[Problem]:
    """PLAN_JOIN_INVALID and PLAN_CONDITION_INVALID problems of a plan, in plan order."""
    problems: list[Problem] = []
    groups = plan.metadata.group_limits
    for i, step in enumerate(plan.steps):
        sid = step.step_id
        if step.join is not None:
            join = step.join_spec
            deps = len(step.depends_on)
            if deps == 0:
                problems.append(_join_problem(
                    i, sid, "join_without_dependencies",
                    f"step {sid!r} has a join but no dependencies", "join"))
            if join.mode == "quorum" and join.count is None:
                problems.append(_join_problem(
                    i, sid, "quorum_without_count",
                    f"step {sid!r}: a quorum join needs a count", "join"))
            elif join.mode == "quorum" and join.count is not None and join.count > deps:
                problems.append(_join_problem(
                    i, sid, "quorum_too_large",
                    f"step {sid!r}: quorum {join.count} of {deps} dependencies can never be met",
                    "join", count=join.count, dependencies=deps))
            elif join.mode != "quorum" and join.count is not None:
                problems.append(_join_problem(
                    i, sid, "count_without_quorum",
                    f"step {sid!r}: count is only for a quorum join", "join"))
        if step.concurrency_group is not None and step.concurrency_group not in groups:
            problems.append(_join_problem(
                i, sid, "unknown_concurrency_group",
                f"step {sid!r} names concurrency group {step.concurrency_group!r}, which "
                "metadata.concurrencyGroups does not limit", "concurrencyGroup",
                group=step.concurrency_group))
        for found in condition_problems(plan, step):
            details: dict[str, object] = {"rule": found.problem, "stepId": sid}
            if found.name is not None:
                details["name"] = found.name
            problems.append(Problem(
                ErrorCode.PLAN_CONDITION_INVALID,
                safe(f"step {sid!r}: condition {found.message}"),
                path=f"/steps/{i}/when", step_id=sid, details=details))
    return problems
