"""Validation of what a client sends: the request envelope and the signal's payload (rule 1).

Nothing here reads the store, so a malformed signal is refused before anything is looked up
or recorded. Error details name the failing paths and never echo the offending values.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from dvt_engine.errors import SignalInvalidPayload
from dvt_engine.identifiers import identifier_problem, validate_identifier
from dvt_engine.models.base import StrictModel
from dvt_engine.models.signals import (
    SIGNAL_PAYLOAD_MODELS,
    RetryRunPayload,
    SignalRequest,
    SignalType,
)

_MAX_ERRORS = 20
_MAX_PATH_PART = 60
_IDENTIFIER_FIELDS = ("signalId", "tenantId", "runId")


def validate_envelope(request: SignalRequest) -> None:
    """Raise IDENTIFIER_INVALID when an identifier of the request breaks contract §1."""
    validate_identifier("signalId", request.signal_id)
    validate_identifier("tenantId", request.tenant_id)
    validate_identifier("runId", request.run_id)
    validate_identifier("actor.id", request.actor.id)


def validate_payload(request: SignalRequest) -> StrictModel:
    """The request's payload as its signal's model; SIGNAL_INVALID_PAYLOAD otherwise."""
    model_type = SIGNAL_PAYLOAD_MODELS[request.type]
    problems = _text_problems(request.payload, ())
    if problems:
        raise _invalid(request.type, problems)
    try:
        model = model_type.model_validate(request.payload)
    except ValidationError as exc:
        raise _invalid(request.type, [_pydantic_error(err) for err in exc.errors()]) from exc
    if isinstance(model, RetryRunPayload) and model.new_run_id == request.run_id:
        raise _invalid(
            request.type,
            [{"path": "newRunId", "message": "must differ from the run being retried"}],
        )
    return model


def dump_payload(model: StrictModel) -> dict[str, Any]:
    """A validated payload as the camelCase JSON object that records and engines carry."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_signal_request(data: Any) -> SignalRequest:
    """Build a SignalRequest from untrusted JSON-like data, raising coded errors only."""
    if not isinstance(data, dict):
        raise SignalInvalidPayload(
            "a signal request must be a JSON object",
            details={"errors": [{"path": "", "message": "not an object"}]},
        )
    # Identifiers first, with their own code, so a '|' is reported as IDENTIFIER_INVALID.
    for name in _IDENTIFIER_FIELDS:
        if name in data and identifier_problem(data[name]) is not None:
            validate_identifier(name, data[name])
    actor = data.get("actor")
    if isinstance(actor, dict) and "id" in actor and identifier_problem(actor["id"]) is not None:
        validate_identifier("actor.id", actor["id"])
    problems = _text_problems(data, ())
    if problems:
        raise SignalInvalidPayload(
            "the signal request contains text that cannot be stored",
            details={"errors": problems},
        )
    try:
        request = SignalRequest.model_validate(data)
    except ValidationError as exc:
        raise SignalInvalidPayload(
            "the signal request does not match its schema",
            details={"errors": [_pydantic_error(err) for err in exc.errors()[:_MAX_ERRORS]]},
        ) from exc
    validate_envelope(request)
    return request


def _invalid(signal_type: SignalType, errors: list[dict[str, str]]) -> SignalInvalidPayload:
    paths = ", ".join(e["path"] or "(payload)" for e in errors[:5])
    return SignalInvalidPayload(
        f"{signal_type} payload is invalid at: {paths}",
        details={"signalType": str(signal_type), "errors": errors[:_MAX_ERRORS]},
    )


def _pydantic_error(err: Any) -> dict[str, str]:
    return {"path": _path(err.get("loc", ())), "message": str(err.get("msg", "invalid"))}


def _path(loc: tuple[Any, ...]) -> str:
    return "/".join(_safe_part(part) for part in loc)


def _safe_part(part: Any) -> str:
    # Keys come from the client: escape controls, surrogates and non-ASCII so details stay
    # printable and JSON-encodable, and cut long keys.
    text = json.dumps(str(part), ensure_ascii=True)[1:-1]
    return text if len(text) <= _MAX_PATH_PART else text[:_MAX_PATH_PART] + "..."


def _text_problems(value: Any, loc: tuple[Any, ...]) -> list[dict[str, str]]:
    """Strings a store cannot hold: NUL (PostgreSQL jsonb) and lone surrogates (not UTF-8)."""
    found: list[dict[str, str]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, loc)]
    while stack and len(found) < _MAX_ERRORS:
        item, where = stack.pop()
        if isinstance(item, str):
            problem = _bad_text(item)
            if problem:
                found.append({"path": _path(where), "message": problem})
        elif isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and _bad_text(key):
                    found.append({"path": _path((*where, key)), "message": "invalid key"})
                stack.append((sub, (*where, key)))
        elif isinstance(item, list | tuple):
            stack.extend((sub, (*where, i)) for i, sub in enumerate(item))
    return found


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text (lone surrogate)"
    return None
