"""Step conditions (plan v1.3 ``when``): CEL expressions, checked at validation, run once.

A condition is evaluated when its step becomes ready, over

- ``params``: the plan's params, with the run's own params (RunContext.params) over them;
- ``steps``: ``{stepId: {"status": ..., "output": ...}}`` for the steps it may name: those settled
  before it on every path (its dependencies through ``all`` joins, transitively).

True starts the step; false skips it (StepSkipped with the reason), and its dependants follow
the plan's ``skipRule``. An expression that fails at run time (a missing key, a type error) is
false, with the error in the reason, so a run never stops on a condition.

The language is CEL (the ``common-expression-language`` package, Rust bindings of the cel crate):
side-effect free, no clock, no I/O, so it gives the same answer on every engine and in a Temporal
workflow. It is imported on first use, so plans without conditions never load it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dvt_engine.models.plan import ExecutionPlan, StepSpec

#: The variables a condition may read.
CONDITION_VARIABLES: frozenset[str] = frozenset({"params", "steps"})
# CEL has no parse tree in the bindings' API; step references are read from the text: the
# dotted form `steps.ID` (a CEL identifier) and the indexed form `steps["ID"]` / `steps['ID']`.
_DOTTED = re.compile(r"\bsteps\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_INDEXED = re.compile(r"\bsteps\s*\[\s*(?:\"([^\"]*)\"|'([^']*)')\s*\]")


@dataclass(frozen=True)
class ConditionProblem:
    """Why a condition is refused at validation: ``syntax``, ``variable``, ``type`` (over
    params alone, evaluated at validation) or ``step``."""

    problem: str
    message: str
    name: str | None = None


def cel_module() -> Any:
    """The CEL bindings (imported on first use)."""
    return _cel()


def _cel() -> Any:
    import cel  # loaded only by plans that have conditions

    return cel


def referenced_steps(expression: str) -> list[str]:
    """The step ids an expression names, in order of first appearance."""
    found: dict[str, None] = {}
    for match in _DOTTED.finditer(expression):
        found.setdefault(match.group(1))
    for match in _INDEXED.finditer(expression):
        found.setdefault(match.group(1) if match.group(1) is not None else match.group(2))
    return list(found)


def settled_before(plan: ExecutionPlan, step_id: str) -> set[str]:
    """The steps certainly settled when ``step_id`` becomes ready (the ones it may read)."""
    seen: set[str] = set()
    todo = [step_id]
    while todo:
        spec = plan.step(todo.pop())
        if spec.join_spec.mode != "all":
            continue  # an any/quorum join may start before some of its dependencies settle
        for dep in spec.depends_on:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def condition_problems(plan: ExecutionPlan, step: StepSpec) -> list[ConditionProblem]:
    """Everything wrong with a step's condition (empty when it has none or it is fine)."""
    if step.when is None:
        return []
    try:
        program = _cel().compile(step.when)
    except (ValueError, RuntimeError) as exc:
        return [ConditionProblem("syntax", str(exc).splitlines()[0][:500])]
    problems = [
        ConditionProblem("variable", f"unknown variable {name!r}; a condition reads "
                         "params and steps", name)
        for name in sorted(set(program.variables()) - CONDITION_VARIABLES)
    ]
    refs = referenced_steps(step.when)
    if not problems and "steps" not in program.variables():
        # Over params alone the value is known now: a type error is found here, not at run time.
        # A missing key is not an error here: the run may give that param when it starts.
        _, error = evaluate(step.when, {"params": dict(plan.params)})
        if error is not None and not error.startswith("KeyError"):
            problems.append(ConditionProblem("type", error))
    readable = settled_before(plan, step.step_id)
    known = set(plan.step_ids)
    for ref in refs:
        if ref not in known:
            problems.append(ConditionProblem("step", f"unknown step {ref!r}", ref))
        elif ref not in readable:
            problems.append(ConditionProblem(
                "step", f"step {ref!r} is not settled before this step starts (name only "
                "dependencies reached through 'all' joins)", ref))
    return problems


def condition_context(
    plan: ExecutionPlan, step_id: str, status_of: Callable[[str], str],
    outputs: Mapping[str, Any], run_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The variables a step's condition sees (``status_of`` gives a step's status)."""
    readable = sorted(settled_before(plan, step_id))
    return {
        "params": {**plan.params, **(run_params or {})},
        "steps": {s: {"status": status_of(s), "output": outputs.get(s)} for s in readable},
    }


def evaluate(expression: str, context: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(value, error): a non-boolean result or an evaluation error counts as false."""
    try:
        value = _cel().evaluate(expression, dict(context))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        return False, f"{type(exc).__name__}: {exc}"[:500]
    if not isinstance(value, bool):
        return False, f"the condition gave {type(value).__name__}, not a bool"
    return value, None


def skip_reason(expression: str, error: str | None) -> str:
    """StepSkipped's reason for a false condition."""
    shown = expression if len(expression) <= 200 else expression[:197] + "..."
    if error is not None:
        return f"condition failed ({error}): {shown}"
    return f"condition false: {shown}"


def cascade_reason(skipped: Sequence[str]) -> str:
    """StepSkipped's reason for a step whose join can no longer be met (skipRule cascade)."""
    return "dependency skipped: " + ", ".join(skipped)
