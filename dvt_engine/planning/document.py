"""Stages 1 and 2 of plan validation: bytes to a plain JSON object, then its schemaVersion."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from dvt_engine.errors import ErrorCode
from dvt_engine.models.plan import SUPPORTED_SCHEMA_VERSIONS
from dvt_engine.planning.problems import (
    MAX_PLAN_BYTES,
    MAX_PLAN_DEPTH,
    MAX_REPORTED_ISSUES,
    MAX_SAFE_INTEGER,
    Path,
    PlanInput,
    Problem,
    is_identifier_path,
    safe,
    schema_problem,
    show,
    text_problem,
)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key would let a reviewer and the engine read different plans.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate object key {show(key)}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _Numbers:
    """json.loads number hooks that note a number ``_normalize`` would report."""

    def __init__(self) -> None:
        self.unsafe = False

    def integer(self, text: str) -> int:
        value = int(text)
        if abs(value) > MAX_SAFE_INTEGER:
            self.unsafe = True
        return value

    def real(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            self.unsafe = True
        return value


def _plain_text(text: str) -> bool:
    """True when no string of ``text`` can decode to one ``text_problem`` reports.

    Without an escape (which may spell NUL or a lone surrogate) every string is a piece of the
    text, and the text itself encodes as UTF-8.
    """
    if "\\u" in text or "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shallow(value: Any, level: int) -> bool:
    """True when no value inside ``value`` (at path length ``level``) nests too deep."""
    children = value.values() if type(value) is dict else value
    if level >= MAX_PLAN_DEPTH and children:
        return False
    for child in children:
        kind = type(child)
        if (kind is dict or kind is list) and not _shallow(child, level + 1):
            return False
    return True


def _decode(data: PlanInput) -> tuple[Any, list[Problem], bool]:
    """The decoded value, its problems, and whether it is plain JSON already (see load_document)."""
    if isinstance(data, Mapping):
        return data, [], False
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > MAX_PLAN_BYTES:
            problem = schema_problem((), f"plan is {len(raw)} bytes, over {MAX_PLAN_BYTES}")
            return None, [problem], False
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, [schema_problem((), f"plan is not UTF-8 (byte {exc.start})")], False
    elif isinstance(data, str):
        text = data
        if len(text) > MAX_PLAN_BYTES:
            problem = schema_problem((), f"plan is over {MAX_PLAN_BYTES} characters")
            return None, [problem], False
    else:
        kind = type(data).__name__
        problem = schema_problem((), f"a plan must be JSON bytes, text or an object: {kind}")
        return None, [problem], False
    try:
        numbers = _Numbers()
        value = json.loads(
            text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicate_keys,
            parse_int=numbers.integer, parse_float=numbers.real,
        )
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        return None, [schema_problem((), f"plan is not valid JSON: {exc.msg} at {where}")], False
    except RecursionError:
        problem = schema_problem((), f"plan nests deeper than {MAX_PLAN_DEPTH} levels")
        return None, [problem], False
    except ValueError as exc:
        return None, [schema_problem((), f"plan is not valid JSON: {exc}")], False
    plain = not numbers.unsafe and _plain_text(text) and (
        not isinstance(value, dict | list) or _shallow(value, 0))
    return value, [], plain


def _normalize(value: Any, path: Path, problems: list[Problem]) -> Any:
    """A plain-JSON copy of ``value``; records values no plan may hold."""
    if len(problems) >= MAX_REPORTED_ISSUES:
        return None
    if len(path) > MAX_PLAN_DEPTH:
        problems.append(schema_problem(path, f"nests deeper than {MAX_PLAN_DEPTH} levels"))
        return None
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(schema_problem(path, f"object key {show(key)} is not a string"))
                continue
            problem = text_problem(key)
            if problem is not None:
                problems.append(schema_problem(path, f"object key {show(key)} {problem}"))
                continue
            out[key] = _normalize(item, (*path, key), problems)
        return out
    if isinstance(value, list | tuple):
        return [_normalize(item, (*path, i), problems) for i, item in enumerate(value)]
    if isinstance(value, str):
        problem = None if is_identifier_path(path) else text_problem(value)
        if problem is not None:
            problems.append(schema_problem(path, f"string {problem}"))
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            # Canonical JSON (RFC 8785) and most JSON readers cannot carry it exactly.
            problems.append(schema_problem(path, "integer outside ±(2^53-1) (RFC 7493)"))
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append(schema_problem(path, f"{value} is not a finite JSON number"))
        return value
    problems.append(schema_problem(path, f"{type(value).__name__} is not a JSON value"))
    return None


def load_document(data: PlanInput) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Stage 1: a JSON object with a string metadata.schemaVersion, or the problems."""
    raw, problems, plain = _decode(data)
    if problems:
        return None, problems
    # A freshly decoded text without escapes, long numbers or deep nesting is plain JSON as it
    # is: walking it again would find nothing to report and copy what nobody else holds.
    doc = raw if plain else _normalize(raw, (), problems)
    if problems:
        return None, problems
    if not isinstance(doc, dict):
        return None, [schema_problem((), "a plan must be a JSON object")]
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        return None, [schema_problem(("metadata",), "metadata must be an object")]
    if not isinstance(metadata.get("schemaVersion"), str):
        return None, [
            schema_problem(("metadata", "schemaVersion"), "schemaVersion must be a string")
        ]
    return doc, []


# --- stage 2: schema version ---------------------------------------------------------------


def version_problems(doc: dict[str, Any]) -> list[Problem]:
    """PLAN_SCHEMA_VERSION_UNSUPPORTED when the declared schemaVersion is unknown."""
    version = doc["metadata"]["schemaVersion"]
    if version in SUPPORTED_SCHEMA_VERSIONS:
        return []
    supported = ", ".join(SUPPORTED_SCHEMA_VERSIONS)
    return [
        Problem(
            ErrorCode.PLAN_SCHEMA_VERSION_UNSUPPORTED,
            safe(f"schemaVersion {show(version)} is not supported (supported: {supported})"),
            path="/metadata/schemaVersion",
            details={
                "schemaVersion": safe(version, 40),
                "supported": list(SUPPORTED_SCHEMA_VERSIONS),
            },
        )
    ]

