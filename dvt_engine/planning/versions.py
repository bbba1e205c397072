"""Moving a plan document between schema versions (``dvt plan upgrade`` / ``downgrade``).

Every version is a superset of the one before, so an upgrade only changes
``metadata.schemaVersion``. A downgrade is refused with PLAN_DOWNGRADE_UNSUPPORTED when the plan
uses a field the target version does not have (``details.fields`` lists them as JSON Pointers);
dvt never drops a field silently, because a plan without its limits, joins or conditions would
run differently from what its author wrote.
"""

from __future__ import annotations

import copy
from typing import Any

from dvt_engine.errors import PlanDowngradeUnsupported, UsageError
from dvt_engine.models.plan import SUPPORTED_SCHEMA_VERSIONS
from dvt_engine.planning.first_error import validate_plan_document
from dvt_engine.planning.problems import PlanInput
from dvt_engine.planning.report import FIELD_INTRODUCED_IN


def fields_newer_than(doc: dict[str, Any], version: str) -> list[str]:
    """JSON Pointers of the fields of ``doc`` introduced after ``version``, in document order."""
    rank = SUPPORTED_SCHEMA_VERSIONS.index
    found = [f"/metadata/{name}" for name in doc["metadata"]
             if rank(FIELD_INTRODUCED_IN.get(("metadata", name), "v1.0")) > rank(version)]
    for i, step in enumerate(doc["steps"]):
        found += [f"/steps/{i}/{name}" for name in step
                  if rank(FIELD_INTRODUCED_IN.get(("step", name), "v1.0")) > rank(version)]
    return found


def change_schema_version(data: PlanInput, target: str) -> dict[str, Any]:
    """The plan document declaring ``target``; refused when the plan needs a newer version."""
    if target not in SUPPORTED_SCHEMA_VERSIONS:
        raise UsageError(f"unknown schema version {target!r}",
                         details={"supported": list(SUPPORTED_SCHEMA_VERSIONS)})
    plan = validate_plan_document(data)
    # The author's own document, only the version changed (defaults stay unwritten).
    doc = plan.model_dump(mode="json", by_alias=True, exclude_unset=True)
    newer = fields_newer_than(doc, target)
    if newer:
        raise PlanDowngradeUnsupported(
            f"the plan uses {len(newer)} field(s) that {target} does not have: "
            + ", ".join(newer[:10]),
            details={"fields": newer, "target": target,
                     "declared": plan.metadata.schema_version})
    changed = copy.deepcopy(doc)
    changed["metadata"]["schemaVersion"] = target
    validate_plan_document(changed)
    return changed
