"""Stored events read back for the projector only, without building a validated ``Event``.

A rebuild folds every event of every run. Validating each stored envelope into an ``Event``
again (nine identifier patterns, the key pattern, two datetimes) was a third of a rebuild's
time, yet the store validated each envelope before it wrote it and never changes it. A
``StoredEvent`` holds what the projector reads of one, parsed by pydantic's own JSON parser
(the one ``Event`` validation uses), so a fold over them gives the snapshot a fold over the
validated events gives, byte for byte (tests/test_projector_stored.py). Anything else that
reads events (the API, followers, the audit) still gets validated ``Event`` models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic_core import from_json

from dvt_engine.models.snapshot import RunSnapshot


class StoredEvent:
    """The fields of a stored envelope the projector folds; datetimes stay text until used."""

    __slots__ = ("emitted_at", "engine_attempt_id", "event_type", "logical_attempt_id",
                 "occurred_at", "payload", "run_id", "run_seq", "step_id")

    def __init__(self, envelope: dict[str, Any], run_seq: int) -> None:
        # Defaults as in ``Event``; envelopes are written by alias (camelCase) only.
        self.run_seq: int | None = run_seq
        self.event_type: str = envelope["eventType"]
        self.run_id: str = envelope["runId"]
        self.step_id: str | None = envelope.get("stepId")
        self.logical_attempt_id: int = envelope.get("logicalAttemptId", 1)
        self.engine_attempt_id: int = envelope.get("engineAttemptId", 1)
        self.emitted_at: datetime | str = envelope["emittedAt"]
        self.occurred_at: datetime | str | None = envelope.get("occurredAt")
        self.payload: dict[str, Any] = envelope.get("payload") or {}


def stored_event(envelope: str | bytes, run_seq: int) -> StoredEvent:
    """A stored envelope's text and its runSeq, as the projector reads them."""
    return StoredEvent(from_json(envelope), run_seq)


def header_snapshot(header: str | bytes) -> RunSnapshot:
    """``initial_snapshot`` of a stored ``RunHeader``'s JSON, without validating the header.

    Only the fields the snapshot copies are read; the header's plan reference, outline
    dependencies, parameters and labels (most of its text) are not turned into models.
    """
    data = from_json(header)
    # One validation of plain data for the run and all its steps, instead of a model per step.
    return RunSnapshot.model_validate({
        "run_id": data["runId"],
        "tenant_id": data["tenantId"],
        "project_id": data["projectId"],
        "environment_id": data["environmentId"],
        "plan_id": data["planId"],
        "plan_version": data["planVersion"],
        "steps": [{"step_id": s["stepId"]} for s in data["steps"]],
        "original_run_id": data.get("originalRunId"),
    })
