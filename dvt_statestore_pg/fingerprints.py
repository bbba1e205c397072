"""Content fingerprints remembered by the payload's plain JSON text.

The fingerprint (sha256 of the RFC 8785 form of ``{eventType, payload}``) is computed by a
pure-Python encoder, the largest single cost of answering a retry. Retries repeat content, so
the fingerprint is remembered under ``(eventType, json.dumps(payload, sort_keys=True))``: that
text is cheap to make, and two payloads with the same text are the same JSON value (it keeps
true apart from 1 and 1 from 1.0), so they have the same fingerprint. A payload the plain
encoder refuses, or a large one, is fingerprinted directly.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from dvt_engine.models.events import Event
from dvt_engine.stores.fingerprint import event_fingerprint

_MAX_ENTRIES = 20_000
_MAX_TEXT = 4096
_known: OrderedDict[tuple[str, str], str] = OrderedDict()
# json.dumps with these options builds an encoder per call; one reused is the same text.
_PLAIN = json.JSONEncoder(sort_keys=True, ensure_ascii=False, allow_nan=False)
# JSONEncoder.encode still builds its C encoder on every call (more than half the time of a
# small payload's text); this is the one it builds, made once. Without the circular-reference
# check: a payload is a validated JSON value, and a cycle would end in RecursionError, which
# goes the direct way below like any payload the plain encoder refuses.
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_ENCODE = (
    _C_ENCODER(None, _PLAIN.default, json.encoder.encode_basestring, None, _PLAIN.key_separator,
               _PLAIN.item_separator, True, False, False)
    if _C_ENCODER is not None else None
)


def _plain_text(payload: object) -> str:
    if _ENCODE is None:
        return _PLAIN.encode(payload)
    if isinstance(payload, str):
        return _PLAIN.encode(payload)  # encode() answers a bare string itself
    return "".join(_ENCODE(payload, 0))


def fingerprint(event: Event) -> str:
    """``event_fingerprint(event)``, remembered for recently seen small payloads."""
    try:
        text = _plain_text(event.payload)
    except (TypeError, ValueError, RecursionError):
        return event_fingerprint(event)
    if len(text) > _MAX_TEXT:
        return event_fingerprint(event)
    key = (event.event_type, text)
    found = _known.get(key)
    if found is None:
        found = _known[key] = event_fingerprint(event)
        if len(_known) > _MAX_ENTRIES:
            _known.popitem(last=False)
    return found
