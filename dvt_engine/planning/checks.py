"""Stages 3-6 of plan validation: JSON Schema, identifiers, DAG rules, secret literals, model."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as JsonSchemaError
from pydantic import ValidationError

from dvt_engine.errors import ErrorCode
from dvt_engine.identifiers import KEY_SEPARATOR, MAX_IDENTIFIER_LENGTH, identifier_problem
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.planning.problems import (
    MAX_REPORTED_ISSUES,
    Path,
    Problem,
    is_identifier_path,
    json_pointer,
    safe,
    schema_problem,
    show,
)
from dvt_engine.schemas import load_schema
from dvt_engine.secret_scan import find_secrets

if TYPE_CHECKING:
    import jsonschema_rs

# --- stage 3: the plan JSON Schema ------------------------------------------------------------


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with local ``$defs`` references inlined: same meaning, about 25% faster."""
    defs: dict[str, Any] = schema.get("$defs", {})

    def inline(node: Any, depth: int) -> Any:
        if depth > 32:
            raise RecursionError("recursive schema")
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
                return inline(defs[ref.removeprefix("#/$defs/")], depth + 1)
            return {k: inline(v, depth + 1) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [inline(v, depth + 1) for v in node]
        return node

    try:
        result: dict[str, Any] = inline(schema, 0)
    except (RecursionError, KeyError):
        return schema
    return result


@cache
def _plan_validator() -> Draft202012Validator:
    return Draft202012Validator(_inline_refs(load_schema("ExecutionPlan")))


def _leaf_errors(error: JsonSchemaError) -> list[JsonSchemaError]:
    """The errors worth showing: inside ``X | None`` (anyOf), those of the branch meant."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return [error]
    branches: dict[Any, list[JsonSchemaError]] = {}
    for sub in error.context:
        branches.setdefault(sub.schema_path[0] if sub.schema_path else None, []).append(sub)
    # A branch whose top-level "type" already fails is not the one the author meant.
    meant = [
        errs
        for errs in branches.values()
        if not any(e.validator == "type" and not e.relative_path for e in errs)
    ]
    if len(meant) != 1:
        return [error]
    return [leaf for sub in meant[0] for leaf in _leaf_errors(sub)]


@cache
def _plan_gate() -> jsonschema_rs.Draft202012Validator:
    # Imported on first use: it is a native module, and most commands validate no plan.
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(load_schema("ExecutionPlan"))


def _surely_valid(doc: dict[str, Any]) -> bool:
    """True when the compiled (Rust) validator accepts ``doc``: it is about 90 times faster.

    Only its yes is trusted. A no, or any failure of its own, sends the document to the
    ``jsonschema`` validator, whose messages and paths the report keeps (and which reads a
    few corners differently: ``$`` before a trailing newline, for one).
    """
    try:
        return bool(_plan_gate().is_valid(doc))
    except Exception:  # any trouble of the fast path means: check it fully
        return False


def schema_problems(doc: dict[str, Any]) -> list[Problem]:
    """Stage 3: every failing path of the plan JSON Schema (identifiers left to stage 4)."""
    if _surely_valid(doc):
        return []
    problems: list[Problem] = []
    errors = _plan_validator().iter_errors(doc)
    for error in (leaf for e in errors for leaf in _leaf_errors(e)):
        path: Path = tuple(error.absolute_path)
        instance = error.instance
        if (
            is_identifier_path(path)
            and isinstance(instance, str)
            and identifier_problem(instance) is not None
        ):
            continue  # reported as IDENTIFIER_INVALID, the more precise code
        problems.append(schema_problem(path, error.message))
    problems.sort(key=lambda p: (p.path or "", p.message))
    return problems[:MAX_REPORTED_ISSUES]


# --- stage 4: identifiers --------------------------------------------------------------------


def _identifier_positions(doc: dict[str, Any]) -> Iterable[tuple[Path, Any]]:
    metadata = doc.get("metadata")
    if isinstance(metadata, dict):
        for name in ("planId", "planVersion"):
            if name in metadata:
                yield ("metadata", name), metadata[name]
    steps = doc.get("steps")
    if not isinstance(steps, list):
        return
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        for name in ("stepId", "kind", "taskQueue"):
            if name in step and step[name] is not None:
                yield ("steps", i, name), step[name]
        deps = step.get("dependsOn")
        if isinstance(deps, list):
            for j, dep in enumerate(deps):
                yield ("steps", i, "dependsOn", j), dep


# Identifiers ``identifier_problem`` accepts, written as one pattern so that a valid one costs
# one match: 1-200 characters, none of '|', Cc (C0 and C1 controls) or Cs (surrogates).
_VALID_IDENTIFIER = re.compile(
    f"[^{re.escape(KEY_SEPARATOR)}\x00-\x1f\x7f-\x9f\ud800-\udfff]"
    f"{{1,{MAX_IDENTIFIER_LENGTH}}}")


def _identifiers_valid(doc: dict[str, Any]) -> bool:
    """True when every string at an identifier position is valid (``_identifier_positions``)."""
    valid = _VALID_IDENTIFIER.fullmatch
    values: list[Any] = [value for _, value in _identifier_positions({"metadata":
                                                                        doc.get("metadata")})]
    steps = doc.get("steps")
    if isinstance(steps, list):
        for step in steps:
            if isinstance(step, dict):
                values += (step.get("stepId"), step.get("kind"), step.get("taskQueue"))
                deps = step.get("dependsOn")
                if isinstance(deps, list):
                    values += deps
    return all(valid(v) is not None for v in values if isinstance(v, str))


def identifier_problems(doc: dict[str, Any]) -> list[Problem]:
    """Stage 4: IDENTIFIER_INVALID for every malformed identifier."""
    if _identifiers_valid(doc):
        return []
    problems: list[Problem] = []
    for path, value in _identifier_positions(doc):
        if not isinstance(value, str):
            continue  # a wrong type is a schema error, reported in stage 3
        problem = identifier_problem(value)
        if problem is None:
            continue
        pointer = json_pointer(path)
        step_id = _step_id_at(doc, path)
        problems.append(
            Problem(
                ErrorCode.IDENTIFIER_INVALID,
                safe(f"{pointer} {problem}"),
                path=pointer,
                step_id=step_id,
                details={"field": pointer, "problem": problem, "value": show(value)},
            )
        )
    return problems[:MAX_REPORTED_ISSUES]


def _step_id_at(doc: dict[str, Any], path: Path) -> str | None:
    if len(path) < 2 or path[0] != "steps" or not isinstance(path[1], int):
        return None
    step = doc["steps"][path[1]]
    value = step.get("stepId") if isinstance(step, dict) else None
    return value if isinstance(value, str) and identifier_problem(value) is None else None


# --- stage 5: DAG rules ------------------------------------------------------------------------


def _outline(doc: dict[str, Any]) -> list[tuple[int, str, list[str]]]:
    """(index, stepId, dependsOn) of every step readable enough to check the DAG."""
    steps = doc.get("steps")
    if not isinstance(steps, list):
        return []
    outline = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("stepId"), str):
            continue
        deps = step.get("dependsOn", [])
        names = [d for d in deps if isinstance(d, str)] if isinstance(deps, list) else []
        outline.append((i, step["stepId"], names))
    return outline


def _dag_problem(rule: str, message: str, path: str, step_id: str | None, **extra: Any) -> Problem:
    details = {"rule": rule, **extra}
    return Problem(
        ErrorCode.PLAN_INVALID, safe(message), path=path, step_id=step_id, details=details
    )


def dag_problems(doc: dict[str, Any]) -> list[Problem]:
    """Duplicate stepIds, self-dependencies, unknown dependencies, then cycles."""
    outline = _outline(doc)
    problems: list[Problem] = []
    first_index: dict[str, int] = {}
    for i, step_id, _ in outline:
        if step_id in first_index:
            problems.append(
                _dag_problem(
                    "duplicate_step_id",
                    f"stepId {show(step_id)} is used by steps {first_index[step_id]} and {i}",
                    f"/steps/{i}/stepId",
                    step_id,
                    stepId=step_id,
                    indexes=[first_index[step_id], i],
                )
            )
        else:
            first_index[step_id] = i
    edges: dict[str, list[str]] = {}
    for i, step_id, deps in outline:
        if first_index[step_id] != i:
            continue
        kept: list[str] = []
        for j, dep in enumerate(deps):
            if dep in first_index and dep != step_id:
                if dep not in kept:
                    kept.append(dep)
                continue
            pointer = f"/steps/{i}/dependsOn/{j}"
            if dep == step_id:
                problems.append(
                    _dag_problem(
                        "self_dependency",
                        f"step {show(step_id)} depends on itself",
                        pointer,
                        step_id,
                        stepId=step_id,
                    )
                )
            elif dep not in first_index:
                problems.append(
                    _dag_problem(
                        "unknown_dependency",
                        f"step {show(step_id)} depends on {show(dep)}, which is not in the plan",
                        pointer,
                        step_id,
                        stepId=step_id,
                        dependency=dep,
                    )
                )
            elif dep not in kept:
                kept.append(dep)
        edges[step_id] = kept
    for cycle in find_cycles(edges):
        shown = " -> ".join(cycle)
        problems.append(
            _dag_problem(
                "cycle",
                safe(f"steps depend on each other in a cycle: {shown}"),
                f"/steps/{first_index[cycle[0]]}/dependsOn",
                cycle[0],
                cycle=cycle,
            )
        )
    return problems


def find_cycles(depends_on: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Cycles of a dependency graph, each as [a, b, ..., a] where each step depends on the next.

    Iterative (no recursion limit on long chains) and deterministic: steps are taken in mapping
    order and dependencies in list order. Every step on a cycle is in at least one reported cycle
    only when cycles are disjoint; one cycle per strongly connected knot is enough to act on.
    """
    remaining_deps = {s: sum(1 for d in deps if d in depends_on) for s, deps in depends_on.items()}
    dependents: dict[str, list[str]] = {s: [] for s in depends_on}
    for step, deps in depends_on.items():
        for dep in deps:
            if dep in dependents:
                dependents[dep].append(step)
    ready = [s for s, n in remaining_deps.items() if n == 0]
    done: set[str] = set()
    while ready:
        step = ready.pop()
        done.add(step)
        for child in dependents[step]:
            remaining_deps[child] -= 1
            if remaining_deps[child] == 0:
                ready.append(child)
    # Every step left waits on at least one other step left, so following the first such
    # dependency never dead-ends and must come back to a step already on the path.
    stuck = [s for s in depends_on if s not in done]
    covered: set[str] = set()
    cycles: list[list[str]] = []
    for start in stuck:
        if start in covered:
            continue
        path: list[str] = []
        position: dict[str, int] = {}
        node = start
        while node not in position and node not in covered:
            position[node] = len(path)
            path.append(node)
            node = next(d for d in depends_on[node] if d in depends_on and d not in done)
        covered.update(path)
        if node in position:
            cycles.append([*path[position[node] :], node])
    return cycles


# --- stage 6: pydantic ------------------------------------------------------------------------


def model_problems(doc: dict[str, Any]) -> tuple[ExecutionPlan | None, list[Problem]]:
    """Stage 6: the pydantic model, or what it refused."""
    try:
        return ExecutionPlan.model_validate(doc), []
    except ValidationError as exc:
        return None, [
            schema_problem(tuple(err["loc"]), err["msg"])
            for err in exc.errors()[:MAX_REPORTED_ISSUES]
        ]



# --- stage 5b: secret literals in params --------------------------------------------------------


def secret_literal_problems(doc: dict[str, Any]) -> list[Problem]:
    """PLAN_SECRET_LITERAL for each secret-looking literal in plan or step params."""
    places: list[tuple[Path, Any, str | None]] = []
    if "params" in doc:
        places.append((("params",), doc["params"], None))
    steps = doc.get("steps")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if isinstance(step, dict) and "params" in step:
            sid = step.get("stepId")
            step_id = sid if isinstance(sid, str) else None
            places.append((("steps", i, "params"), step["params"], step_id))
    problems: list[Problem] = []
    for path, params, step_id in places:
        for finding in find_secrets(params, path):
            problems.append(
                Problem(
                    ErrorCode.PLAN_SECRET_LITERAL,
                    safe(
                        f"{finding.path} holds a secret-looking literal ({finding.rule}); plans "
                        'hold secret references only: {"secretRef": "env:NAME"}'
                    ),
                    path=finding.path,
                    step_id=step_id,
                    details={"rule": finding.rule},
                )
            )
    return problems[:MAX_REPORTED_ISSUES]
