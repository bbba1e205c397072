"""Reading plan files, storing them in the registry, and validating them for an engine."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dvt_engine.errors import SchemaValidationFailed, UsageError
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.validation import ValidationIssue, ValidationReport
from dvt_engine.ports import RunStateStore, WorkflowEngine


def read_plan_bytes(path: str) -> bytes:
    """The bytes of a plan file (``-`` reads stdin); USAGE_ERROR when it cannot be read."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read plan file {path}: {exc.strerror or exc}",
            details={"path": path, "hint": "Pass the path of a plan JSON file."},
        ) from None


def _planning() -> Any | None:
    try:
        return importlib.import_module("dvt_engine.planning")
    except ImportError:
        return None


def _schema_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"path": "/" + "/".join(str(p) for p in e["loc"]), "message": e["msg"]}
        for e in exc.errors()
    ]


def parse_plan(data: bytes) -> ExecutionPlan:
    """The plan in ``data``: SCHEMA_VALIDATION_FAILED when it is not a valid plan document."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaValidationFailed(f"the plan is not valid JSON: {exc}",
                                     details={"errors": [{"path": "/", "message": str(exc)}]}
                                     ) from None
    planning = _planning()
    validate_document = getattr(planning, "validate_plan_document", None)
    if validate_document is not None:
        result = validate_document(document)
        if isinstance(result, ExecutionPlan):
            return result
    try:
        return ExecutionPlan.model_validate(document)
    except ValidationError as exc:
        raise SchemaValidationFailed(
            "the plan does not match the plan schema",
            details={"errors": _schema_errors(exc)},
        ) from None


async def store_plan(store: RunStateStore, data: bytes) -> PlanRef:
    """Put plan bytes in the store's content-addressed registry and return their reference."""
    planning = _planning()
    storer = getattr(planning, "store_plan", None)
    if storer is not None:
        ref = await storer(store, data)
        if isinstance(ref, PlanRef):
            return ref
    plan = parse_plan(data)
    uri = await store.put_plan(data)
    return PlanRef(
        uri=uri,
        sha256=hashlib.sha256(data).hexdigest(),
        schema_version=plan.metadata.schema_version,
        plan_id=plan.metadata.plan_id,
        plan_version=plan.metadata.plan_version,
        size_bytes=len(data),
    )


async def validate_for_engine(data: bytes, engine_name: str,
                              engine: WorkflowEngine | None) -> ValidationReport:
    """The validation report of a plan file for an engine; a broken file is a report too."""
    digest = hashlib.sha256(data).hexdigest()
    planning = _planning()
    build = getattr(planning, "build_validation_report", None)
    caps = getattr(engine, "declared_capabilities", None)
    registry = getattr(engine, "registry", None)
    if build is not None and caps is not None and registry is not None:
        # The raw bytes, so a broken document still yields a full report rather than one error.
        report: ValidationReport = build(data, engine=engine_name, capabilities=caps(),
                                         known_kinds=registry.kinds(), plan_sha256=digest,
                                         params_schemas=registry.params_schemas())
        return report
    try:
        plan = parse_plan(data)
    except SchemaValidationFailed as exc:
        issues = tuple(
            ValidationIssue(code=str(exc.code), message=e.get("message", exc.message),
                            path=e.get("path"))
            for e in exc.details.get("errors", [{"message": exc.message}])
        )
        return ValidationReport(ok=False, engine=engine_name, plan_sha256=digest, issues=issues)
    except Exception as exc:
        code = getattr(exc, "code", None)
        if code is None:
            raise
        return ValidationReport(
            ok=False, engine=engine_name, plan_sha256=digest,
            issues=(ValidationIssue(code=str(code), message=getattr(exc, "message", str(exc))),),
        )
    if engine is None:
        raise UsageError("no engine to validate against")
    report = await engine.validate(plan)
    if report.plan_sha256 is None:
        report = report.model_copy(update={"plan_sha256": digest})
    return report


async def change_version(plan_path: str, target: str, output: str | None, *,
                         direction: str) -> int:
    """``dvt plan upgrade|downgrade``: write the plan declaring ``target``; 0 on success."""
    from dvt_engine.models.plan import SUPPORTED_SCHEMA_VERSIONS
    from dvt_engine.planning.versions import change_schema_version

    data = read_plan_bytes(plan_path)
    declared = parse_plan(data).metadata.schema_version
    rank = SUPPORTED_SCHEMA_VERSIONS.index
    if target in SUPPORTED_SCHEMA_VERSIONS and declared in SUPPORTED_SCHEMA_VERSIONS and (
            (direction == "upgrade" and rank(target) < rank(declared))
            or (direction == "downgrade" and rank(target) > rank(declared))):
        other = "downgrade" if direction == "upgrade" else "upgrade"
        raise UsageError(f"cannot {direction} a {declared} plan to {target}",
                         details={"declared": declared, "target": target,
                                  "hint": f"use `dvt plan {other}`"})
    text = json.dumps(change_schema_version(data, target), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        _write(output, text)
    return 0


def _write(path: str, text: str) -> None:
    # A small local file, written once at the end of a one-shot command.
    Path(path).write_text(text, encoding="utf-8")
