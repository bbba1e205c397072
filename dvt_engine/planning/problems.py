"""What every plan check shares: limits, the Problem record and message helpers."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dvt_engine.errors import ErrorCode
from dvt_engine.models.validation import ValidationIssue

MAX_PLAN_BYTES = 8 * 1024 * 1024
MAX_PLAN_DEPTH = 64
MAX_REPORTED_ISSUES = 50
MAX_SAFE_INTEGER = 2**53 - 1

PlanInput = bytes | bytearray | memoryview | str | Mapping[str, Any]
Path = tuple[str | int, ...]
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One finding of a check: a code, a message, where it is and whether it stops the plan."""

    code: ErrorCode
    message: str
    path: str | None = None
    step_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    severity: Severity = "error"

    def issue(self) -> ValidationIssue:
        """The problem as a report issue."""
        return ValidationIssue(
            code=str(self.code),
            message=self.message,
            severity=self.severity,
            path=self.path,
            step_id=self.step_id,
            details=self.details,
        )


def json_pointer(path: Iterable[str | int]) -> str:
    """A JSON Pointer (RFC 6901) for a path inside the document."""
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "".join("/" + p for p in parts)


def show(value: Any, limit: int = 80) -> str:
    """A short, printable, UTF-8-safe rendering of a hostile value for messages."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit * 2 else text[: limit * 2] + "..."


def safe(message: str, limit: int = 300) -> str:
    """Messages may quote input: cap their size and escape what UTF-8 cannot carry."""
    clipped = message if len(message) <= limit else message[:limit] + "..."
    return clipped.encode("utf-8", "backslashreplace").decode("utf-8")


def schema_problem(path: Iterable[str | int], message: str) -> Problem:
    """A SCHEMA_VALIDATION_FAILED problem at ``path``."""
    pointer = json_pointer(path)
    return Problem(ErrorCode.SCHEMA_VALIDATION_FAILED, safe(message), path=pointer)


def is_identifier_path(path: Path) -> bool:
    """True for the paths that hold identifiers (planId, stepId, kind, dependsOn, ...)."""
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


#: A lone surrogate: text that cannot be encoded as UTF-8.
SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored as UTF-8 text (None when it can)."""
    if "\x00" in value:
        return "contains a NUL character"
    if SURROGATE.search(value) is not None:
        return "contains a lone surrogate (not encodable as UTF-8)"
    return None


def digest_of(data: PlanInput) -> str | None:
    """The sha256 of a document given as bytes or text (None for an object)."""
    if isinstance(data, str):
        return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()
    if isinstance(data, bytes | bytearray | memoryview):
        return hashlib.sha256(bytes(data)).hexdigest()
    return None
