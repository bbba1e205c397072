"""Plan validation (contract §2.1 steps 3-4, §2.2 and §9): a first-error check and a full report.

``validate_plan_document`` raises the first coded error, in contract order:
SCHEMA_VALIDATION_FAILED for bytes that are not a JSON plan object, PLAN_SCHEMA_VERSION_UNSUPPORTED,
SCHEMA_VALIDATION_FAILED against the plan JSON Schema, IDENTIFIER_INVALID, PLAN_INVALID (DAG).
``build_validation_report`` collects every issue as data, adding unknown step kinds, the
capability check with the plan's fallbackBehavior, targetAdapter, and version warnings.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as JsonSchemaError
from pydantic import ValidationError

from dvt_engine.errors import (
    ERROR_CLASSES,
    DvtError,
    ErrorCode,
    PlanInvalid,
    SchemaValidationFailed,
)
from dvt_engine.identifiers import identifier_problem
from dvt_engine.models.plan import BUILTIN_STEP_KINDS, SUPPORTED_SCHEMA_VERSIONS, ExecutionPlan
from dvt_engine.models.validation import (
    CapabilityCheck,
    CapabilityResolution,
    ValidationIssue,
    ValidationReport,
)
from dvt_engine.planning.capabilities import ALL_CAPABILITIES, emulation_for
from dvt_engine.schemas import load_schema

MAX_PLAN_BYTES = 8 * 1024 * 1024
MAX_PLAN_DEPTH = 64
MAX_REPORTED_ISSUES = 50
MAX_SAFE_INTEGER = 2**53 - 1

# Which schema version introduced each optional field; fields absent here exist since v1.0.
# A plan may use a newer field than it declares: it is honoured, with a warning in the report.
FIELD_INTRODUCED_IN: Mapping[tuple[str, str], str] = {
    ("metadata", "failurePolicy"): "v1.1",
    ("metadata", "requiresApproval"): "v1.1",
    ("metadata", "operatorTimeoutMs"): "v1.1",
    ("step", "costHint"): "v1.1",
    ("metadata", "requiresCapabilities"): "v1.2",
    ("metadata", "fallbackBehavior"): "v1.2",
    ("metadata", "targetAdapter"): "v1.2",
    ("step", "taskQueue"): "v1.2",
}

PlanInput = bytes | bytearray | memoryview | str | Mapping[str, Any]
Path = tuple[str | int, ...]
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class _Problem:
    code: ErrorCode
    message: str
    path: str | None = None
    step_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    severity: Severity = "error"

    def issue(self) -> ValidationIssue:
        return ValidationIssue(
            code=str(self.code),
            message=self.message,
            severity=self.severity,
            path=self.path,
            step_id=self.step_id,
            details=self.details,
        )


# --- helpers ---


def _pointer(path: Iterable[str | int]) -> str:
    """A JSON Pointer (RFC 6901) for a path inside the document."""
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "".join("/" + p for p in parts)


def _show(value: Any, limit: int = 80) -> str:
    """A short, printable, UTF-8-safe rendering of a hostile value for messages."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit * 2 else text[: limit * 2] + "..."


def _safe(message: str, limit: int = 300) -> str:
    """Messages may quote input: cap their size and escape what UTF-8 cannot carry."""
    clipped = message if len(message) <= limit else message[:limit] + "..."
    return clipped.encode("utf-8", "backslashreplace").decode("utf-8")


def _schema_problem(path: Iterable[str | int], message: str) -> _Problem:
    pointer = _pointer(path)
    return _Problem(ErrorCode.SCHEMA_VALIDATION_FAILED, _safe(message), path=pointer)


def _is_identifier_path(path: Path) -> bool:
    if path in (("metadata", "planId"), ("metadata", "planVersion")):
        return True
    if len(path) == 3 and path[0] == "steps" and isinstance(path[1], int):
        return path[2] in ("stepId", "kind", "taskQueue")
    return (
        len(path) == 4
        and path[0] == "steps"
        and isinstance(path[1], int)
        and path[2] == "dependsOn"
        and isinstance(path[3], int)
    )


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character"
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        return "contains a lone surrogate (not encodable as UTF-8)"
    return None


# --- stage 1: bytes to a JSON object ------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key would let a reviewer and the engine read different plans.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate object key {_show(key)}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _decode(data: PlanInput) -> tuple[Any, list[_Problem]]:
    if isinstance(data, Mapping):
        return data, []
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > MAX_PLAN_BYTES:
            return None, [_schema_problem((), f"plan is {len(raw)} bytes, over {MAX_PLAN_BYTES}")]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, [_schema_problem((), f"plan is not UTF-8 (byte {exc.start})")]
    elif isinstance(data, str):
        text = data
        if len(text) > MAX_PLAN_BYTES:
            return None, [_schema_problem((), f"plan is over {MAX_PLAN_BYTES} characters")]
    else:
        kind = type(data).__name__
        return None, [_schema_problem((), f"a plan must be JSON bytes, text or an object: {kind}")]
    try:
        return json.loads(
            text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicate_keys
        ), []
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        return None, [_schema_problem((), f"plan is not valid JSON: {exc.msg} at {where}")]
    except RecursionError:
        return None, [_schema_problem((), f"plan nests deeper than {MAX_PLAN_DEPTH} levels")]
    except ValueError as exc:
        return None, [_schema_problem((), f"plan is not valid JSON: {exc}")]


def _normalize(value: Any, path: Path, problems: list[_Problem]) -> Any:
    """A plain-JSON copy of ``value``; records values no plan may hold."""
    if len(problems) >= MAX_REPORTED_ISSUES:
        return None
    if len(path) > MAX_PLAN_DEPTH:
        problems.append(_schema_problem(path, f"nests deeper than {MAX_PLAN_DEPTH} levels"))
        return None
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(_schema_problem(path, f"object key {_show(key)} is not a string"))
                continue
            problem = _text_problem(key)
            if problem is not None:
                problems.append(_schema_problem(path, f"object key {_show(key)} {problem}"))
                continue
            out[key] = _normalize(item, (*path, key), problems)
        return out
    if isinstance(value, list | tuple):
        return [_normalize(item, (*path, i), problems) for i, item in enumerate(value)]
    if isinstance(value, str):
        problem = None if _is_identifier_path(path) else _text_problem(value)
        if problem is not None:
            problems.append(_schema_problem(path, f"string {problem}"))
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            # Canonical JSON (RFC 8785) and most JSON readers cannot carry it exactly.
            problems.append(_schema_problem(path, "integer outside ±(2^53-1) (RFC 7493)"))
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append(_schema_problem(path, f"{value} is not a finite JSON number"))
        return value
    problems.append(_schema_problem(path, f"{type(value).__name__} is not a JSON value"))
    return None


def _load(data: PlanInput) -> tuple[dict[str, Any] | None, list[_Problem]]:
    """Stage 1: a JSON object with a string metadata.schemaVersion, or the problems."""
    raw, problems = _decode(data)
    if problems:
        return None, problems
    doc = _normalize(raw, (), problems)
    if problems:
        return None, problems
    if not isinstance(doc, dict):
        return None, [_schema_problem((), "a plan must be a JSON object")]
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        return None, [_schema_problem(("metadata",), "metadata must be an object")]
    if not isinstance(metadata.get("schemaVersion"), str):
        return None, [
            _schema_problem(("metadata", "schemaVersion"), "schemaVersion must be a string")
        ]
    return doc, []


# --- stage 2: schema version ---------------------------------------------------------------


def _version_problems(doc: dict[str, Any]) -> list[_Problem]:
    version = doc["metadata"]["schemaVersion"]
    if version in SUPPORTED_SCHEMA_VERSIONS:
        return []
    supported = ", ".join(SUPPORTED_SCHEMA_VERSIONS)
    return [
        _Problem(
            ErrorCode.PLAN_SCHEMA_VERSION_UNSUPPORTED,
            _safe(f"schemaVersion {_show(version)} is not supported (supported: {supported})"),
            path="/metadata/schemaVersion",
            details={
                "schemaVersion": _safe(version, 40),
                "supported": list(SUPPORTED_SCHEMA_VERSIONS),
            },
        )
    ]


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


def _schema_problems(doc: dict[str, Any]) -> list[_Problem]:
    problems: list[_Problem] = []
    errors = _plan_validator().iter_errors(doc)
    for error in (leaf for e in errors for leaf in _leaf_errors(e)):
        path: Path = tuple(error.absolute_path)
        instance = error.instance
        if (
            _is_identifier_path(path)
            and isinstance(instance, str)
            and identifier_problem(instance) is not None
        ):
            continue  # reported as IDENTIFIER_INVALID, the more precise code
        problems.append(_schema_problem(path, error.message))
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


def _identifier_problems(doc: dict[str, Any]) -> list[_Problem]:
    problems: list[_Problem] = []
    for path, value in _identifier_positions(doc):
        if not isinstance(value, str):
            continue  # a wrong type is a schema error, reported in stage 3
        problem = identifier_problem(value)
        if problem is None:
            continue
        pointer = _pointer(path)
        step_id = _step_id_at(doc, path)
        problems.append(
            _Problem(
                ErrorCode.IDENTIFIER_INVALID,
                _safe(f"{pointer} {problem}"),
                path=pointer,
                step_id=step_id,
                details={"field": pointer, "problem": problem, "value": _show(value)},
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


def _dag_problem(rule: str, message: str, path: str, step_id: str | None, **extra: Any) -> _Problem:
    details = {"rule": rule, **extra}
    return _Problem(
        ErrorCode.PLAN_INVALID, _safe(message), path=path, step_id=step_id, details=details
    )


def _dag_problems(doc: dict[str, Any]) -> list[_Problem]:
    """Duplicate stepIds, self-dependencies, unknown dependencies, then cycles."""
    outline = _outline(doc)
    problems: list[_Problem] = []
    first_index: dict[str, int] = {}
    for i, step_id, _ in outline:
        if step_id in first_index:
            problems.append(
                _dag_problem(
                    "duplicate_step_id",
                    f"stepId {_show(step_id)} is used by steps {first_index[step_id]} and {i}",
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
            pointer = f"/steps/{i}/dependsOn/{j}"
            if dep == step_id:
                problems.append(
                    _dag_problem(
                        "self_dependency",
                        f"step {_show(step_id)} depends on itself",
                        pointer,
                        step_id,
                        stepId=step_id,
                    )
                )
            elif dep not in first_index:
                problems.append(
                    _dag_problem(
                        "unknown_dependency",
                        f"step {_show(step_id)} depends on {_show(dep)}, which is not in the plan",
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
                _safe(f"steps depend on each other in a cycle: {shown}"),
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


def _model_problems(doc: dict[str, Any]) -> tuple[ExecutionPlan | None, list[_Problem]]:
    try:
        return ExecutionPlan.model_validate(doc), []
    except ValidationError as exc:
        return None, [
            _schema_problem(tuple(err["loc"]), err["msg"])
            for err in exc.errors()[:MAX_REPORTED_ISSUES]
        ]


# --- the first-error check ----------------------------------------------------------------------


def _raise_first(problems: Sequence[_Problem]) -> None:
    if not problems:
        return
    first = problems[0]
    details: dict[str, Any] = dict(first.details)
    if first.path is not None:
        details.setdefault("path", first.path)
    if first.code is ErrorCode.SCHEMA_VALIDATION_FAILED:
        details["errors"] = [
            {"path": p.path or "", "message": p.message}
            for p in problems
            if p.code is ErrorCode.SCHEMA_VALIDATION_FAILED
        ]
    if first.code is ErrorCode.PLAN_INVALID:
        details["problems"] = [
            {"path": p.path or "", "message": p.message, **p.details}
            for p in problems
            if p.code is ErrorCode.PLAN_INVALID
        ]
    cls = ERROR_CLASSES.get(first.code, PlanInvalid)
    raise cls(first.message, details=details)


class _DigestMemo:
    """Digests of documents that passed every check, so a plan loaded again skips jsonschema.

    Engines load one plan several times (store, start, workers); the JSON Schema check is the
    costly part, and bytes with the same sha256 cannot differ. Only digests are kept.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, digest: object) -> bool:
        with self._lock:
            if digest not in self._seen:
                return False
            self._seen.move_to_end(str(digest))
            return True

    def add(self, digest: str) -> None:
        with self._lock:
            self._seen[digest] = None
            self._seen.move_to_end(digest)
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)


_VALID_DIGESTS = _DigestMemo()


def validate_plan_document(data: PlanInput) -> ExecutionPlan:
    """Parse and validate a plan document; raise the first coded error in contract order."""
    digest = _digest_of(data)
    if digest is not None and digest in _VALID_DIGESTS:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        assert isinstance(raw, bytes | bytearray | memoryview)
        return ExecutionPlan.model_validate_json(bytes(raw))
    doc, problems = _load(data)
    _raise_first(problems)
    assert doc is not None
    _raise_first(_version_problems(doc))
    _raise_first(_schema_problems(doc))
    _raise_first(_identifier_problems(doc))
    _raise_first(_dag_problems(doc))
    plan, problems = _model_problems(doc)
    _raise_first(problems)
    assert plan is not None
    if digest is not None:
        _VALID_DIGESTS.add(digest)
    return plan


# --- the report ---


def _plan_document(plan: ExecutionPlan) -> dict[str, Any]:
    # Only fields the author set, so defaults do not count as "uses a newer field".
    return plan.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _version_warnings(doc: dict[str, Any]) -> list[_Problem]:
    declared = doc["metadata"]["schemaVersion"]
    if declared not in SUPPORTED_SCHEMA_VERSIONS:
        return []
    rank = SUPPORTED_SCHEMA_VERSIONS.index
    found: list[tuple[str, str, str | None]] = []  # (pointer, introduced-in, stepId)
    for name in doc["metadata"]:
        since = FIELD_INTRODUCED_IN.get(("metadata", name))
        if since is not None and rank(since) > rank(declared):
            found.append((f"/metadata/{name}", since, None))
    steps = doc.get("steps")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict):
            continue
        for name in step:
            since = FIELD_INTRODUCED_IN.get(("step", name))
            if since is not None and rank(since) > rank(declared):
                sid = step.get("stepId")
                found.append((f"/steps/{i}/{name}", since, sid if isinstance(sid, str) else None))
    return [
        _Problem(
            ErrorCode.PLAN_SCHEMA_VERSION_UNSUPPORTED,
            f"{pointer} was introduced in {since}; the plan declares {declared}. "
            "It is honoured; declare the newer schemaVersion to silence this warning.",
            path=pointer,
            step_id=_safe(sid, 200) if sid else None,
            details={"introducedIn": since, "declared": declared},
            severity="warning",
        )
        for pointer, since, sid in found
    ]


def _kind_problems(doc: dict[str, Any], known_kinds: frozenset[str]) -> list[_Problem]:
    steps = doc.get("steps")
    problems = []
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        kind = step.get("kind") if isinstance(step, dict) else None
        if not isinstance(kind, str) or kind in known_kinds:
            continue
        sid = step.get("stepId")
        problems.append(
            _Problem(
                ErrorCode.STEP_KIND_UNKNOWN,
                _safe(f"step kind {_show(kind)} has no registered handler"),
                path=f"/steps/{i}/kind",
                step_id=sid if isinstance(sid, str) else None,
                details={"kind": _safe(kind, 200), "known": sorted(known_kinds)},
            )
        )
    return problems


def _capability_check(
    doc: dict[str, Any], engine: str, capabilities: frozenset[str]
) -> tuple[CapabilityCheck, list[_Problem]]:
    metadata = doc["metadata"]
    raw_required = metadata.get("requiresCapabilities", [])
    required = tuple(
        dict.fromkeys(c for c in raw_required if isinstance(c, str))
        if isinstance(raw_required, list)
        else ()
    )
    fallback = metadata.get("fallbackBehavior", "reject")
    if fallback not in ("reject", "emulate", "degrade"):
        fallback = "reject"  # the schema stage reports the bad value
    missing = tuple(c for c in required if c not in capabilities)
    problems: list[_Problem] = []
    resolution: CapabilityResolution = "satisfied"
    for capability in missing:
        shown = _show(capability)
        unknown = "" if capability in ALL_CAPABILITIES else " (not a capability dvt knows)"
        base = {
            "capability": _safe(capability, 200),
            "engine": engine,
            "fallbackBehavior": fallback,
        }
        emulation = emulation_for(capability, capabilities) if fallback == "emulate" else None
        if fallback == "degrade":
            problems.append(
                _Problem(
                    ErrorCode.CAPABILITY_NOT_SUPPORTED,
                    _safe(f"engine {engine!r} lacks {shown}{unknown}; running degraded without it"),
                    path="/metadata/requiresCapabilities",
                    details=base,
                    severity="warning",
                )
            )
        elif emulation is not None:
            problems.append(
                _Problem(
                    ErrorCode.CAPABILITY_NOT_SUPPORTED,
                    f"engine {engine!r} lacks {capability}; emulated: {emulation.description}",
                    path="/metadata/requiresCapabilities",
                    details={**base, "emulation": emulation.description, "via": emulation.via},
                    severity="warning",
                )
            )
        else:
            why = "and it has no documented emulation there" if fallback == "emulate" else ""
            problems.append(
                _Problem(
                    ErrorCode.CAPABILITY_NOT_SUPPORTED,
                    _safe(f"engine {engine!r} lacks {shown}{unknown} {why}".rstrip()),
                    path="/metadata/requiresCapabilities",
                    details=base,
                )
            )
    if missing:
        if any(p.severity == "error" for p in problems):
            resolution = "rejected"
        else:
            resolution = "degraded" if fallback == "degrade" else "emulated"
    target = metadata.get("targetAdapter", "any")
    if isinstance(target, str) and target not in ("any", engine):
        problems.append(
            _Problem(
                ErrorCode.CAPABILITY_NOT_SUPPORTED,
                _safe(f"the plan targets adapter {_show(target)}, not {engine!r}"),
                path="/metadata/targetAdapter",
                details={"targetAdapter": _safe(target, 200), "engine": engine},
            )
        )
    check = CapabilityCheck(
        required=required,
        supported=tuple(sorted(capabilities)),
        missing=missing,
        fallback_behavior=fallback,
        resolution=resolution,
    )
    return check, problems


def build_validation_report(
    data_or_plan: PlanInput | ExecutionPlan,
    *,
    engine: str,
    capabilities: Iterable[str],
    known_kinds: Iterable[str],
    plan_sha256: str | None = None,
) -> ValidationReport:
    """Every issue that stops ``data_or_plan`` running on ``engine``, plus warnings, as data."""
    caps = frozenset(capabilities)
    kinds = frozenset(known_kinds) | frozenset(BUILTIN_STEP_KINDS)
    if plan_sha256 is None and not isinstance(data_or_plan, ExecutionPlan):
        plan_sha256 = _digest_of(data_or_plan)
    source = (
        _plan_document(data_or_plan) if isinstance(data_or_plan, ExecutionPlan) else data_or_plan
    )
    doc, problems = _load(source)
    check: CapabilityCheck | None = None
    if doc is not None:
        problems = _version_problems(doc)
        if not problems:
            if not isinstance(data_or_plan, ExecutionPlan):
                # A model was checked field by field when it was built; the schema adds nothing.
                problems += _schema_problems(doc)
            problems += _identifier_problems(doc)
            problems += _dag_problems(doc)
            if not problems:
                problems += _model_problems(doc)[1]
            problems += _version_warnings(doc)
            problems += _kind_problems(doc, kinds)
            check, cap_problems = _capability_check(doc, engine, caps)
            problems += cap_problems
    metadata = doc.get("metadata", {}) if doc is not None else {}

    def text(name: str) -> str | None:
        value = metadata.get(name)
        return _safe(value, 200) if isinstance(value, str) else None

    return ValidationReport(
        ok=not any(p.severity == "error" for p in problems),
        engine=engine,
        plan_id=text("planId"),
        plan_version=text("planVersion"),
        schema_version=text("schemaVersion"),
        plan_sha256=plan_sha256,
        issues=tuple(p.issue() for p in problems),
        capabilities=check,
    )


def _digest_of(data: PlanInput) -> str | None:
    """The sha256 of a document given as bytes or text (None for an object)."""
    if isinstance(data, str):
        return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()
    if isinstance(data, bytes | bytearray | memoryview):
        return hashlib.sha256(bytes(data)).hexdigest()
    return None


def report_error(report: ValidationReport) -> DvtError | None:
    """The coded error of the report's first error issue, or None when the plan can run."""
    errors = report.errors
    if not errors:
        return None
    first = errors[0]
    try:
        code = ErrorCode(first.code)
    except ValueError:
        code = ErrorCode.PLAN_INVALID
    details: dict[str, Any] = dict(first.details)
    if first.path is not None:
        details.setdefault("path", first.path)
    if first.step_id is not None:
        details.setdefault("stepId", first.step_id)
    same = [i for i in errors if i.code == first.code]
    if code is ErrorCode.SCHEMA_VALIDATION_FAILED:
        details["errors"] = [{"path": i.path or "", "message": i.message} for i in same]
    details["issues"] = [i.model_dump(mode="json") for i in errors]
    cls = ERROR_CLASSES.get(code, SchemaValidationFailed)
    return cls(first.message, details=details)


def raise_for_report(report: ValidationReport) -> None:
    """Raise the report's first error as its coded DvtError; return when the plan can run."""
    error = report_error(report)
    if error is not None:
        raise error


def prepare_plan(
    data: PlanInput,
    *,
    engine: str,
    capabilities: Iterable[str],
    known_kinds: Iterable[str],
    plan_sha256: str | None = None,
) -> tuple[ExecutionPlan, ValidationReport]:
    """Validate a document for one engine: the plan and its report, or the first coded error."""
    plan = validate_plan_document(data)
    report = build_validation_report(
        plan,
        engine=engine,
        capabilities=capabilities,
        known_kinds=known_kinds,
        plan_sha256=plan_sha256 if plan_sha256 is not None else _digest_of(data),
    )
    raise_for_report(report)
    return plan, report
