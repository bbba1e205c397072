"""The first-error check: ``validate_plan_document`` raises the first coded error in contract order.

SCHEMA_VALIDATION_FAILED for bytes that are not a JSON plan object, PLAN_SCHEMA_VERSION_UNSUPPORTED,
SCHEMA_VALIDATION_FAILED against the plan JSON Schema, IDENTIFIER_INVALID, PLAN_INVALID (DAG),
then dvt's own PLAN_SECRET_LITERAL (a credential written into params instead of a secretRef).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from dvt_engine.errors import ERROR_CLASSES, ErrorCode, PlanInvalid
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.planning.checks import (
    dag_problems,
    identifier_problems,
    model_problems,
    schema_problems,
    secret_literal_problems,
)
from dvt_engine.planning.document import load_document, version_problems
from dvt_engine.planning.flow_checks import flow_problems
from dvt_engine.planning.problems import PlanInput, Problem, digest_of
from dvt_engine.planning.signal_checks import signal_problems


def _raise_first(problems: Sequence[Problem]) -> None:
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
    if first.code is ErrorCode.PLAN_SECRET_LITERAL:
        details["paths"] = [p.path for p in problems if p.code is ErrorCode.PLAN_SECRET_LITERAL]
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
    digest = digest_of(data)
    if digest is not None and digest in _VALID_DIGESTS:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        assert isinstance(raw, bytes | bytearray | memoryview)
        return ExecutionPlan.model_validate_json(bytes(raw))
    doc, problems = load_document(data)
    _raise_first(problems)
    assert doc is not None
    _raise_first(version_problems(doc))
    _raise_first(schema_problems(doc))
    _raise_first(identifier_problems(doc))
    _raise_first(dag_problems(doc))
    _raise_first(secret_literal_problems(doc))
    plan, problems = model_problems(doc)
    _raise_first(problems)
    assert plan is not None
    _raise_first(flow_problems(plan))
    _raise_first([p for p in signal_problems(plan) if p.severity == "error"])
    if digest is not None:
        _VALID_DIGESTS.add(digest)
    return plan

