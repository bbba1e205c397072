"""Each step's params against its kind's JSON Schema, so a bad plan is refused before it runs.

Handlers may declare ``params_schema``; the same schema is checked again when the step starts
(a worker may hold a newer handler than the process that validated the plan).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator

from dvt_engine.errors import ErrorCode
from dvt_engine.planning.problems import Problem, json_pointer, safe

#: Per step, only the first few violations are reported: one is enough to fix, many is noise.
MAX_PARAM_PROBLEMS_PER_STEP = 5


@lru_cache(maxsize=64)
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))


def params_problems(doc: Mapping[str, Any],
                    schemas: Mapping[str, Mapping[str, Any]]) -> list[Problem]:
    """STEP_PARAMS_INVALID for each step whose params break its kind's declared schema."""
    steps = doc.get("steps")
    problems: list[Problem] = []
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict):
            continue
        kind, sid = step.get("kind"), step.get("stepId")
        schema = schemas.get(kind) if isinstance(kind, str) else None
        if schema is None:
            continue
        params = step.get("params", {})
        validator = _validator(json.dumps(schema, sort_keys=True))
        found = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
        for error in found[:MAX_PARAM_PROBLEMS_PER_STEP]:
            pointer = json_pointer(["steps", i, "params", *error.absolute_path])
            problems.append(Problem(
                ErrorCode.STEP_PARAMS_INVALID,
                safe(f"{kind} params are invalid at {pointer}: {error.message}"),
                path=pointer,
                step_id=sid if isinstance(sid, str) else None,
                details={"kind": kind},
            ))
    return problems
