"""Idempotency keys reproduce every vector of contract §4.3, kept in golden_fixtures/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dvt_engine.errors import IdentifierInvalid
from dvt_engine.idempotency import event_key, run_request_key, signal_key

VECTORS = Path(__file__).resolve().parent.parent / "golden_fixtures" / "idempotency_vectors.json"


def _vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text("utf-8"))
    return data


def test_event_key_vectors() -> None:
    vectors = _vectors()["event_keys"]
    assert len(vectors) >= 8
    for v in vectors:
        got = event_key(v["runId"], v["stepId"], v["logicalAttemptId"], v["eventType"],
                        v["planVersion"])
        assert got == v["sha256"], v["name"]


def test_signal_key_vectors() -> None:
    vectors = _vectors()["signal_keys"]
    assert vectors
    for v in vectors:
        assert signal_key(v["tenantId"], v["runId"], v["signalId"]) == v["sha256"]


def test_run_request_key_vectors() -> None:
    vectors = _vectors()["run_request_keys"]
    assert vectors
    for v in vectors:
        got = run_request_key(v["tenantId"], v["projectId"], v["environmentId"], v["planId"],
                              v["planVersion"], v["runRequestId"])
        assert got == v["sha256"]


def test_separator_in_part_is_refused() -> None:
    with pytest.raises(IdentifierInvalid) as info:
        event_key("run|1", None, None, "RunStarted", "1.0")
    assert info.value.code == "IDENTIFIER_INVALID"


def test_discriminator_changes_key() -> None:
    first = event_key("r", None, 1, "RunPaused", "1")
    second = event_key("r", None, 2, "RunPaused", "1")
    assert first != second
    assert first == event_key("r", None, None, "RunPaused", "1")
