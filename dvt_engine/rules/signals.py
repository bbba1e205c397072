"""Custom signals (plan v1.3 ``metadata.signals`` and ``waitForSignal``): which step a signal
completes, and the checks of a declared payload schema and of a payload against it.

A step with ``waitForSignal`` is a gate like an approval step: it opens (StepAwaitingApproval,
substatus AWAITING_APPROVAL), waits without running a handler, and is completed by an accepted
CUSTOM signal of its name, the signal's data becoming its output. So every engine already knows
how to hold, time out, pause around and cancel it. See docs/plans.md and docs/signals.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from dvt_engine.models.plan import MAX_SIGNAL_SCHEMA_BYTES, ExecutionPlan, StepSpec
from dvt_engine.models.run import StepStatus, StepSubstatus
from dvt_engine.models.snapshot import RunSnapshot

#: dvt_engine.steps.builtins.APPROVAL_KIND (the steps package imports the rules, not back).
APPROVAL_KIND = "approval"
#: The kind a waiting step declares: it runs no handler of its own.
WAIT_KIND = "noop"
#: At most this many payload errors are reported, each naming a path, never a value.
MAX_PAYLOAD_ERRORS = 20


def is_gate(step: StepSpec) -> bool:
    """True for a step that waits for an operator instead of running: approval or signal wait."""
    return step.kind == APPROVAL_KIND or step.wait_for_signal is not None


def waits_for(step: StepSpec, name: str) -> bool:
    """True when ``step`` waits for the custom signal ``name``."""
    return step.wait_for_signal is not None and step.wait_for_signal.name == name


def waiting_step(plan: ExecutionPlan, snapshot: RunSnapshot, name: str) -> str | None:
    """The step a CUSTOM signal ``name`` completes now: the first, in plan order, whose wait
    for it is open (RUNNING, AWAITING_APPROVAL), or None when no step waits for it."""
    waiting = {s.step_id for s in snapshot.steps
               if s.status == StepStatus.RUNNING
               and s.substatus == StepSubstatus.AWAITING_APPROVAL}
    for step in plan.steps:
        if step.step_id in waiting and waits_for(step, name):
            return step.step_id
    return None


def schema_problem(schema: Mapping[str, Any], size: int) -> str | None:
    """Why ``schema`` (of ``size`` canonical bytes) cannot be a payload schema, or None."""
    if size > MAX_SIGNAL_SCHEMA_BYTES:
        return f"is {size} bytes; a payload schema holds at most {MAX_SIGNAL_SCHEMA_BYTES}"
    try:
        Draft202012Validator.check_schema(dict(schema))
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        return f"is not a valid Draft 2020-12 schema{f' at {where}' if where else ''}"
    return None


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))


@lru_cache(maxsize=256)
def _gate(schema_json: str) -> Any:
    # Imported on first use: a native module most processes never need.
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(json.loads(schema_json))


def _surely_valid(schema_json: str, data: Mapping[str, Any]) -> bool:
    """True when the compiled (Rust) validator accepts ``data``; only its yes is trusted, a
    no (or any trouble of its own) goes to ``jsonschema`` for paths and keywords, as the plan
    schema check does (dvt_engine/planning/checks.py)."""
    try:
        return bool(_gate(schema_json).is_valid(dict(data)))
    except Exception:  # any trouble of the fast path means: check it fully
        return False


def _safe(part: Any) -> str:
    # Keys come from the sender: printable, JSON-safe and short in the error's details.
    return json.dumps(str(part), ensure_ascii=True)[1:-1][:100]


def payload_errors(schema: Mapping[str, Any] | None,
                   data: Mapping[str, Any]) -> list[dict[str, str]]:
    """``{path, message}`` of each way ``data`` breaks ``schema`` (none without a schema).

    Messages name the rule broken (the schema keyword), never the offending value.
    """
    if schema is None:
        return []
    key = json.dumps(schema, sort_keys=True)
    if _surely_valid(key, data):
        return []
    validator = _validator(key)
    errors = sorted(validator.iter_errors(dict(data)), key=lambda e: list(e.path))
    return [
        {"path": "/".join(["data", *(_safe(p) for p in e.path)]),
         "message": f"breaks the schema's {e.validator!r} rule"}
        for e in errors[:MAX_PAYLOAD_ERRORS]
    ]
