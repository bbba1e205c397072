"""The fingerprint of an event's content, which decides a repeated idempotency key.

A key stored again with the same event type and payload is a retry (a quiet duplicate); with a
different type or payload it is a conflict, refused loudly with IDEMPOTENCY_CONFLICT.
"""

from __future__ import annotations

import hashlib

from dvt_engine.checksum import canonical_json
from dvt_engine.errors import IdempotencyConflict
from dvt_engine.models.events import Event
from dvt_engine.telemetry import count_idempotency_conflict


def event_fingerprint(event: Event) -> str:
    """sha256 of the RFC 8785 form of ``{eventType, payload}``: what a retry must repeat."""
    content = event.model_dump(mode="json", by_alias=True, include={"event_type", "payload"})
    return hashlib.sha256(canonical_json(content)).hexdigest()


def refuse_conflict(event: Event, stored: Event | str, *, store: str) -> None:
    """Raise IdempotencyConflict (and count it) unless ``event`` repeats the stored one.

    ``stored`` is the stored event or its fingerprint.
    """
    expected = stored if isinstance(stored, str) else event_fingerprint(stored)
    if event_fingerprint(event) == expected:
        return
    count_idempotency_conflict(event, store)
    raise IdempotencyConflict(
        f"idempotency key {event.idempotency_key} of run {event.run_id!r} is already stored"
        f" with a different event type or payload",
        details={
            "runId": event.run_id,
            "idempotencyKey": event.idempotency_key,
            "eventType": event.event_type,
        },
    )
