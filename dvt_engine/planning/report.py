"""The validation report: every issue of a plan on one engine, as data, and its coded error.

Adds to the document checks the unknown step kinds, the capability check with the plan's
fallbackBehavior, targetAdapter, and warnings for fields newer than the declared schemaVersion.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dvt_engine.errors import ERROR_CLASSES, DvtError, ErrorCode, SchemaValidationFailed
from dvt_engine.models.plan import BUILTIN_STEP_KINDS, SUPPORTED_SCHEMA_VERSIONS, ExecutionPlan
from dvt_engine.models.validation import (
    CapabilityCheck,
    CapabilityResolution,
    ValidationReport,
)
from dvt_engine.planning.capabilities import (
    ALL_CAPABILITIES,
    FLOW_BOUNDED_CONCURRENCY,
    FLOW_CLASS_LIMIT,
    FLOW_CLASS_ROUTING,
    FLOW_CONDITIONS,
    FLOW_FEATURES,
    FLOW_FOR_EACH,
    FLOW_LOSERS_CANCEL,
    FLOW_PARTIAL_JOIN,
    FLOW_PRIORITY,
    emulation_for,
    flow_support,
)
from dvt_engine.planning.checks import (
    dag_problems,
    identifier_problems,
    model_problems,
    schema_problems,
    secret_literal_problems,
)
from dvt_engine.planning.document import load_document, version_problems
from dvt_engine.planning.first_error import validate_plan_document
from dvt_engine.planning.flow_checks import flow_problems
from dvt_engine.planning.params import params_problems
from dvt_engine.planning.problems import PlanInput, Problem, digest_of, safe, show
from dvt_engine.planning.signal_checks import signal_problems

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
    ("metadata", "maxParallel"): "v1.3",
    ("metadata", "concurrencyGroups"): "v1.3",
    ("metadata", "skipRule"): "v1.3",
    ("step", "concurrencyGroup"): "v1.3",
    ("step", "join"): "v1.3",
    ("step", "when"): "v1.3",
    ("step", "forEach"): "v1.3",
    ("metadata", "resourceClasses"): "v1.3",
    ("step", "resourceClass"): "v1.3",
    ("step", "priority"): "v1.3",
    ("metadata", "signals"): "v1.3",
    ("step", "waitForSignal"): "v1.3",
}

def _plan_document(plan: ExecutionPlan) -> dict[str, Any]:
    # Only fields the author set, so defaults do not count as "uses a newer field".
    return plan.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _version_warnings(doc: dict[str, Any]) -> list[Problem]:
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
        Problem(
            ErrorCode.PLAN_SCHEMA_VERSION_UNSUPPORTED,
            f"{pointer} was introduced in {since}; the plan declares {declared}. "
            "It is honoured; declare the newer schemaVersion to silence this warning.",
            path=pointer,
            step_id=safe(sid, 200) if sid else None,
            details={"introducedIn": since, "declared": declared},
            severity="warning",
        )
        for pointer, since, sid in found
    ]


def _kind_problems(doc: dict[str, Any], known_kinds: frozenset[str]) -> list[Problem]:
    steps = doc.get("steps")
    problems = []
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        kind = step.get("kind") if isinstance(step, dict) else None
        if not isinstance(kind, str) or kind in known_kinds:
            continue
        sid = step.get("stepId")
        problems.append(
            Problem(
                ErrorCode.STEP_KIND_UNKNOWN,
                safe(f"step kind {show(kind)} has no registered handler"),
                path=f"/steps/{i}/kind",
                step_id=sid if isinstance(sid, str) else None,
                details={"kind": safe(kind, 200), "known": sorted(known_kinds)},
            )
        )
    return problems


def _capability_check(
    doc: dict[str, Any], engine: str, capabilities: frozenset[str]
) -> tuple[CapabilityCheck, list[Problem]]:
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
    problems: list[Problem] = []
    resolution: CapabilityResolution = "satisfied"
    for capability in missing:
        shown = show(capability)
        unknown = "" if capability in ALL_CAPABILITIES else " (not a capability dvt knows)"
        base = {
            "capability": safe(capability, 200),
            "engine": engine,
            "fallbackBehavior": fallback,
        }
        emulation = emulation_for(capability, capabilities) if fallback == "emulate" else None
        if fallback == "degrade":
            problems.append(
                Problem(
                    ErrorCode.CAPABILITY_NOT_SUPPORTED,
                    safe(f"engine {engine!r} lacks {shown}{unknown}; running degraded without it"),
                    path="/metadata/requiresCapabilities",
                    details=base,
                    severity="warning",
                )
            )
        elif emulation is not None:
            problems.append(
                Problem(
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
                Problem(
                    ErrorCode.CAPABILITY_NOT_SUPPORTED,
                    safe(f"engine {engine!r} lacks {shown}{unknown} {why}".rstrip()),
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
            Problem(
                ErrorCode.CAPABILITY_NOT_SUPPORTED,
                safe(f"the plan targets adapter {show(target)}, not {engine!r}"),
                path="/metadata/targetAdapter",
                details={"targetAdapter": safe(target, 200), "engine": engine},
            )
        )
    check = CapabilityCheck(
        required=required,
        supported=tuple(sorted(capabilities)),
        missing=missing,
        fallback_behavior=fallback,
        resolution=resolution,
        flow_features=flow_support(engine, _flow_features_used(doc)),
    )
    return check, problems


def _flow_features_used(doc: dict[str, Any]) -> tuple[str, ...]:
    """The plan v1.3 flow features a plan document uses, in FLOW_FEATURES order."""
    metadata = doc["metadata"]
    raw = doc.get("steps")
    # A hostile document may hold anything here; the schema problems already name it.
    steps = [s for s in raw if isinstance(s, dict)] if isinstance(raw, list) else []
    used = {
        FLOW_BOUNDED_CONCURRENCY: "maxParallel" in metadata or "concurrencyGroups" in metadata,
        FLOW_PARTIAL_JOIN: any("join" in s and s["join"] not in ("all", {"mode": "all"})
                               for s in steps),
        FLOW_CONDITIONS: any("when" in s for s in steps),
        FLOW_FOR_EACH: any("forEach" in s for s in steps),
        FLOW_PRIORITY: any(s.get("priority") not in (None, 0) for s in steps),
        FLOW_CLASS_LIMIT: any(isinstance(c, dict) and "maxParallel" in c
                              for c in (metadata.get("resourceClasses") or {}).values()),
        FLOW_CLASS_ROUTING: any("resourceClass" in s for s in steps),
        FLOW_LOSERS_CANCEL: any(isinstance(s.get("join"), dict)
                                and s["join"].get("losers") == "cancel" for s in steps),
    }
    return tuple(f for f in FLOW_FEATURES if used[f])


def build_validation_report(
    data_or_plan: PlanInput | ExecutionPlan,
    *,
    engine: str,
    capabilities: Iterable[str],
    known_kinds: Iterable[str],
    plan_sha256: str | None = None,
    params_schemas: Mapping[str, Mapping[str, Any]] | None = None,
) -> ValidationReport:
    """Every issue that stops ``data_or_plan`` running on ``engine``, plus warnings, as data.

    ``params_schemas`` (kind -> JSON Schema, from the handler registry) checks step params.
    """
    caps = frozenset(capabilities)
    kinds = frozenset(known_kinds) | frozenset(BUILTIN_STEP_KINDS)
    if plan_sha256 is None and not isinstance(data_or_plan, ExecutionPlan):
        plan_sha256 = digest_of(data_or_plan)
    source = (
        _plan_document(data_or_plan) if isinstance(data_or_plan, ExecutionPlan) else data_or_plan
    )
    doc, problems = load_document(source)
    check: CapabilityCheck | None = None
    if doc is not None:
        problems = version_problems(doc)
        if not problems:
            if not isinstance(data_or_plan, ExecutionPlan):
                # A model was checked field by field when it was built; the schema adds nothing.
                problems += schema_problems(doc)
            problems += identifier_problems(doc)
            problems += dag_problems(doc)
            problems += secret_literal_problems(doc)
            if not problems:
                model, found = model_problems(doc)
                problems += found
                if model is not None:
                    problems += flow_problems(model)
                    problems += signal_problems(model)
            problems += _version_warnings(doc)
            problems += _kind_problems(doc, kinds)
            problems += params_problems(doc, params_schemas or {})
            check, cap_problems = _capability_check(doc, engine, caps)
            problems += cap_problems
    metadata = doc.get("metadata", {}) if doc is not None else {}

    def text(name: str) -> str | None:
        value = metadata.get(name)
        return safe(value, 200) if isinstance(value, str) else None

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
    if code is ErrorCode.PLAN_SECRET_LITERAL:
        details["paths"] = [i.path for i in same]
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
    params_schemas: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[ExecutionPlan, ValidationReport]:
    """Validate a document for one engine: the plan and its report, or the first coded error."""
    plan = validate_plan_document(data)
    report = build_validation_report(
        plan,
        engine=engine,
        capabilities=capabilities,
        known_kinds=known_kinds,
        plan_sha256=plan_sha256 if plan_sha256 is not None else digest_of(data),
        params_schemas=params_schemas,
    )
    raise_for_report(report)
    return plan, report
