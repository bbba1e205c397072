"""Checks every store runs before it persists an event (contract §4.2)."""

from __future__ import annotations

import json

from pydantic import ValidationError

from dvt_engine.errors import SchemaValidationFailed
from dvt_engine.models.events import PAYLOAD_MODELS, Event, EventType
from dvt_engine.secret_scan import redact_secrets

MAX_PAYLOAD_BYTES = 256 * 1024


def prepared_for_storage(event: Event) -> Event:
    """The event as a store persists it: validated, with secret-looking values masked.

    Producers that build events through ``EventFactory`` have masked them already; this is the
    second line of defence for any other producer, so no store ever writes a credential.
    """
    validate_event(event)
    payload = redact_secrets(event.payload)
    return event if payload == event.payload else event.model_copy(update={"payload": payload})


def validate_envelope(event: Event) -> None:
    """The checks of ``validate_event`` that do not read the payload.

    A store that finds an event's key stored with the same content fingerprint runs only these:
    the payload is the stored one, which passed every payload check when it was written.
    """
    _check_assigned(event)
    try:
        etype = EventType(event.event_type)
    except ValueError:
        return
    _check_step(etype, event)


def _check_assigned(event: Event) -> None:
    if event.run_seq is not None or event.persisted_at is not None:
        raise SchemaValidationFailed(
            "runSeq and persistedAt are assigned by the store, not by producers",
            details={"eventId": event.event_id},
        )


def _check_step(etype: EventType, event: Event) -> None:
    if etype.is_step_event and event.step_id is None:
        raise SchemaValidationFailed(f"{etype} needs a stepId", details={"eventType": etype})
    if not etype.is_step_event and event.step_id is not None:
        raise SchemaValidationFailed(
            f"{etype} is a run-level event and takes no stepId", details={"eventType": etype}
        )


def validate_event(event: Event) -> None:
    """Raise SCHEMA_VALIDATION_FAILED when an event cannot be persisted as it is."""
    _check_assigned(event)
    try:
        encoded = json.dumps(event.payload, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SchemaValidationFailed(
            f"payload is not JSON: {exc}", details={"eventType": event.event_type}
        ) from exc
    if _has_nul(event.payload):
        # PostgreSQL's jsonb cannot hold NUL; refuse it everywhere so every store agrees.
        raise SchemaValidationFailed(
            "payload contains a NUL character", details={"eventType": event.event_type}
        )
    size = len(encoded.encode("utf-8"))
    if size > MAX_PAYLOAD_BYTES:
        raise SchemaValidationFailed(
            f"payload is {size} bytes, more than {MAX_PAYLOAD_BYTES}; put data in artifacts",
            details={"eventType": event.event_type, "sizeBytes": size},
        )
    try:
        etype = EventType(event.event_type)
    except ValueError:
        return  # a newer producer's event: stored as it is, skipped by older projectors
    _check_step(etype, event)
    try:
        PAYLOAD_MODELS[etype].model_validate(event.payload)
    except ValidationError as exc:
        raise SchemaValidationFailed(
            f"{etype} payload does not match its schema",
            details={"eventType": str(etype), "errors": _errors(exc)},
        ) from exc


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"path": "/".join(str(p) for p in err["loc"]), "message": err["msg"]}
        for err in exc.errors()[:20]
    ]
