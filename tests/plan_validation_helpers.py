"""Plans and helpers shared by the plan validation tests (tests/test_plan_validation*.py)."""

from __future__ import annotations

from typing import Any

import pytest

from dvt_engine.errors import (
    DvtError,
)
from dvt_engine.models.validation import ValidationReport
from dvt_engine.planning.capabilities import (
    ENGINE_CAPABILITIES,
)
from dvt_engine.planning.validation import (
    build_validation_report,
    validate_plan_document,
)


def plan_doc(**metadata: Any) -> dict[str, Any]:
    """The contract's example plan (section 2.2), with metadata overrides."""
    doc: dict[str, Any] = {
        "metadata": {
            "planId": "nightly-marts",
            "planVersion": "1.2.0",
            "schemaVersion": "v1.2",
            "requiresCapabilities": ["workflow.fan.parallel"],
            "fallbackBehavior": "reject",
            "targetAdapter": "any",
            "failurePolicy": "failFast",
            "requiresApproval": False,
        },
        "params": {"date": "2026-11-21"},
        "steps": [
            {"stepId": "extract", "kind": "noop"},
            {
                "stepId": "orders",
                "kind": "dbt.run",
                "dependsOn": ["extract"],
                "params": {"select": "orders"},
                "retry": {
                    "maxAttempts": 3,
                    "initialIntervalMs": 1000,
                    "backoffCoefficient": 2.0,
                    "maxIntervalMs": 60000,
                    "nonRetryableErrorCodes": ["BAD_SQL"],
                },
                "timeoutMs": 600000,
                "costHint": {"units": 2},
            },
            {"stepId": "signoff", "kind": "approval", "dependsOn": ["orders"]},
        ],
    }
    doc["metadata"].update(metadata)
    return doc


def steps_doc(*steps: dict[str, Any], version: str = "v1.2") -> dict[str, Any]:
    meta = {"planId": "p", "planVersion": "1", "schemaVersion": version}
    return {"metadata": meta, "steps": list(steps)}


def expect_error(data: Any, cls: type[DvtError]) -> DvtError:
    with pytest.raises(DvtError) as info:
        validate_plan_document(data)
    assert type(info.value) is cls, f"expected {cls.code}, got {info.value!r}"
    return info.value


def report_for(data: Any, engine: str = "temporal", **kw: Any) -> ValidationReport:
    kw.setdefault("capabilities", ENGINE_CAPABILITIES.get(engine, frozenset()))
    kw.setdefault("known_kinds", {"dbt.run"})
    return build_validation_report(data, engine=engine, **kw)
