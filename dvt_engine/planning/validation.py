"""Plan validation (contract §2.1 steps 3-4, §2.2 and §9): a first-error check and a full report.

The stable import path of the validation API. The work is split by job:
``document`` (bytes to a JSON object, schemaVersion), ``checks`` (JSON Schema, identifiers,
DAG, model, secret literals), ``first_error`` (``validate_plan_document``) and ``report``
(``build_validation_report`` and its coded error).
"""

from __future__ import annotations

from dvt_engine.planning.checks import find_cycles
from dvt_engine.planning.first_error import validate_plan_document
from dvt_engine.planning.problems import (
    MAX_PLAN_BYTES,
    MAX_PLAN_DEPTH,
    MAX_REPORTED_ISSUES,
    MAX_SAFE_INTEGER,
    PlanInput,
)
from dvt_engine.planning.report import (
    FIELD_INTRODUCED_IN,
    build_validation_report,
    prepare_plan,
    raise_for_report,
    report_error,
)

__all__ = [
    "FIELD_INTRODUCED_IN",
    "MAX_PLAN_BYTES",
    "MAX_PLAN_DEPTH",
    "MAX_REPORTED_ISSUES",
    "MAX_SAFE_INTEGER",
    "PlanInput",
    "build_validation_report",
    "find_cycles",
    "prepare_plan",
    "raise_for_report",
    "report_error",
    "validate_plan_document",
]
