"""Parity form, RFC 8785 canonical JSON, and the snapshot checksum (contract §5.5)."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from dvt_engine.models.snapshot import RunSnapshot

# What legitimately differs between engines and between two executions of the same plan.
_RUN_VOLATILE = ("runId", "lastEventSeq", "engineRunRef", "startedAt", "completedAt",
                 "durationMs", "originalRunId")
_STEP_VOLATILE = ("engineAttemptId", "startedAt", "completedAt")


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON: sorted keys, no whitespace, ECMAScript numbers, UTF-8."""
    return rfc8785.dumps(value)


def parity_form(snapshot: RunSnapshot) -> dict[str, Any]:
    """The engine-independent part of a snapshot, as JSON data."""
    data = snapshot.model_dump(mode="json")
    for key in _RUN_VOLATILE:
        data.pop(key, None)
    data["cost"] = _without_time(data.get("cost"))
    for step in data["steps"]:
        for key in _STEP_VOLATILE:
            step.pop(key, None)
        step["cost"] = _without_time(step.get("cost"))
    return data


def _without_time(cost: Any) -> Any:
    if isinstance(cost, dict):
        return {k: v for k, v in cost.items() if k != "durationMs"}
    return cost


def snapshot_checksum(snapshot: RunSnapshot) -> str:
    """sha256_hex(canonical_json(parity_form(snapshot)))."""
    return hashlib.sha256(canonical_json(parity_form(snapshot))).hexdigest()


def snapshot_bytes(snapshot: RunSnapshot) -> bytes:
    """A snapshot's full canonical bytes, for byte-identical rebuild comparisons."""
    return canonical_json(snapshot.model_dump(mode="json"))
