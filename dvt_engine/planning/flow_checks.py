"""Stage 7 of plan validation: the v1.3 flow rules (joins, concurrency groups, resource
classes, conditions, forEach).

Run on the model once the DAG is known to be sound: a quorum count the dependencies can meet,
a join only on a step with dependencies, a limit for every group a step names, and conditions
that compile and name only steps settled before theirs (rules.conditions).
"""

from __future__ import annotations

from dvt_engine.errors import ErrorCode
from dvt_engine.models.plan import MAX_FOR_EACH_ITEMS, ExecutionPlan, StepSpec
from dvt_engine.planning.problems import Problem, safe
from dvt_engine.rules.conditions import (
    CONDITION_VARIABLES,
    cel_module,
    condition_problems,
    settled_before,
)


def _join_problem(i: int, step_id: str, problem: str, message: str, field: str,
                  **details: object) -> Problem:
    return Problem(ErrorCode.PLAN_JOIN_INVALID, safe(message), path=f"/steps/{i}/{field}",
                   step_id=step_id, details={"rule": problem, "stepId": step_id, **details})


def _for_each_problems(plan: ExecutionPlan, i: int, step: StepSpec) -> list[Problem]:
    """PLAN_FOREACH_INVALID problems of one step's forEach (docs/plans.md)."""
    each = step.for_each
    if each is None:
        return []
    sid = step.step_id
    found: list[tuple[str, str, str, dict[str, object]]] = []
    if (each.step is None) == (each.param is None):
        found.append(("source_missing", "forEach needs exactly one of step and param",
                      "forEach", {}))
    elif each.step is not None and each.step not in set(plan.step_ids):
        found.append(("unknown_source_step", f"forEach reads unknown step {each.step!r}",
                      "forEach/step", {"source": each.step}))
    elif each.step is not None and each.step not in settled_before(plan, sid):
        found.append(("source_not_settled", f"forEach reads step {each.step!r}, which is not "
                      "settled before this step (name a dependency reached through 'all' "
                      "joins)", "forEach/step", {"source": each.step}))
    if each.max_items is None:
        found.append(("bound_missing", "forEach needs maxItems", "forEach", {}))
    elif each.max_items > MAX_FOR_EACH_ITEMS:
        found.append(("bound_too_large", f"forEach maxItems {each.max_items} is above "
                      f"{MAX_FOR_EACH_ITEMS}", "forEach/maxItems",
                      {"maxItems": each.max_items, "limit": MAX_FOR_EACH_ITEMS}))
    prefix = f"{sid}["
    taken = [s for s in plan.step_ids if s.startswith(prefix)]
    if taken:
        found.append(("child_id_taken", f"step {taken[0]!r} has the id of a forEach child",
                      "forEach", {"taken": taken[0]}))
    if each.when is not None:
        try:
            names = set(cel_module().compile(each.when).variables())
        except (ValueError, RuntimeError) as exc:
            found.append(("when_syntax", str(exc).splitlines()[0][:500], "forEach/when", {}))
        else:
            extra = sorted(names - CONDITION_VARIABLES - {"item", "index"})
            if extra:
                found.append(("when_variable", f"forEach.when reads unknown variable "
                              f"{extra[0]!r}", "forEach/when", {"name": extra[0]}))
    return [Problem(ErrorCode.PLAN_FOREACH_INVALID, safe(f"step {sid!r}: {message}"),
                    path=f"/steps/{i}/{field}", step_id=sid,
                    details={"rule": rule, "stepId": sid, **details})
            for rule, message, field, details in found]


def flow_problems(plan: ExecutionPlan) -> list[Problem]:
    """PLAN_JOIN_INVALID, PLAN_RESOURCE_CLASS_UNKNOWN, PLAN_CONDITION_INVALID and
    PLAN_FOREACH_INVALID problems of a plan, in plan order."""
    problems: list[Problem] = []
    groups = plan.metadata.group_limits
    classes = set(plan.metadata.resource_classes or {})
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
            if join.mode == "all" and join.losers == "cancel":
                problems.append(_join_problem(
                    i, sid, "cancel_without_partial_join",
                    f"step {sid!r}: losers: cancel is only for an any or quorum join (an all "
                    "join has no losers)", "join/losers"))
        if step.concurrency_group is not None and step.concurrency_group not in groups:
            problems.append(_join_problem(
                i, sid, "unknown_concurrency_group",
                f"step {sid!r} names concurrency group {step.concurrency_group!r}, which "
                "metadata.concurrencyGroups does not limit", "concurrencyGroup",
                group=step.concurrency_group))
        if step.resource_class is not None and step.resource_class not in classes:
            problems.append(Problem(
                ErrorCode.PLAN_RESOURCE_CLASS_UNKNOWN,
                safe(f"step {sid!r} names resource class {step.resource_class!r}, which "
                     "metadata.resourceClasses does not declare"),
                path=f"/steps/{i}/resourceClass", step_id=sid,
                details={"rule": "unknown_resource_class", "stepId": sid,
                         "resourceClass": step.resource_class,
                         "declared": sorted(classes)}))
        for found in condition_problems(plan, step):
            details: dict[str, object] = {"rule": found.problem, "stepId": sid}
            if found.name is not None:
                details["name"] = found.name
            problems.append(Problem(
                ErrorCode.PLAN_CONDITION_INVALID,
                safe(f"step {sid!r}: condition {found.message}"),
                path=f"/steps/{i}/when", step_id=sid, details=details))
        problems.extend(_for_each_problems(plan, i, step))
    return problems
