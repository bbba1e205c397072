"""Plan v1.3 custom signals: each declared payload schema is a bounded, valid Draft 2020-12
schema, and each ``waitForSignal`` names a declared signal on a ``noop`` step (docs/plans.md)."""

from __future__ import annotations

from dvt_engine.checksum import canonical_json
from dvt_engine.errors import ErrorCode
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.planning.problems import Problem, Severity, safe
from dvt_engine.rules.signals import WAIT_KIND, schema_problem


def _problem(rule: str, message: str, path: str, step_id: str | None = None,
             severity: Severity = "error", **details: object) -> Problem:
    return Problem(ErrorCode.PLAN_SIGNAL_INVALID, safe(message), path=path, step_id=step_id,
                   details={"rule": rule, **details}, severity=severity)


def signal_problems(plan: ExecutionPlan) -> list[Problem]:
    """PLAN_SIGNAL_INVALID problems of a plan's signals and waits, in plan order."""
    declared = plan.metadata.signals or {}
    problems: list[Problem] = []
    for name, decl in declared.items():
        if decl.payload is None:
            continue
        why = schema_problem(decl.payload, len(canonical_json(decl.payload)))
        if why is not None:
            problems.append(_problem("payload_schema", f"signal {name!r}: payload schema {why}",
                                     f"/metadata/signals/{name}/payload", signal=name))
    awaited: set[str] = set()
    for i, step in enumerate(plan.steps):
        wait = step.wait_for_signal
        if wait is None:
            continue
        sid = step.step_id
        awaited.add(wait.name)
        if wait.name not in declared:
            problems.append(_problem(
                "undeclared_signal", f"step {sid!r} waits for signal {wait.name!r}, which "
                "metadata.signals does not declare", f"/steps/{i}/waitForSignal/name", sid,
                stepId=sid, signal=wait.name))
        if step.kind != WAIT_KIND:
            problems.append(_problem(
                "wait_kind", f"step {sid!r} waits for a signal, so its kind must be "
                f"{WAIT_KIND!r} (it runs no handler)", f"/steps/{i}/kind", sid, stepId=sid))
        if step.for_each is not None:
            problems.append(_problem(
                "wait_for_each", f"step {sid!r} cannot both wait for a signal and fan out",
                f"/steps/{i}/waitForSignal", sid, stepId=sid))
    for name in declared:
        if name not in awaited:
            problems.append(_problem(
                "unused_signal", f"signal {name!r} is declared but no step waits for it; "
                "every send of it will be refused with SIGNAL_NOT_AWAITED",
                f"/metadata/signals/{name}", severity="warning", signal=name))
    return problems
