"""Identifier rules (contract §1): 1-200 characters, no '|' and no control characters.

'|' joins the parts of every idempotency key, so allowing it would let two different events
share one key. Letters outside ASCII are allowed.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from dvt_engine.errors import IdentifierInvalid

MAX_IDENTIFIER_LENGTH = 200
KEY_SEPARATOR = "|"


def identifier_problem(value: Any) -> str | None:
    """Say what is wrong with an identifier, or None when it is valid."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > MAX_IDENTIFIER_LENGTH:
        return f"must be at most {MAX_IDENTIFIER_LENGTH} characters, got {len(value)}"
    if KEY_SEPARATOR in value:
        return "must not contain '|'"
    for ch in value:
        # Cc covers C0/C1 controls; Cs (lone surrogates) cannot be encoded as UTF-8 at all.
        if unicodedata.category(ch) in ("Cc", "Cs"):
            return f"must not contain control characters (found U+{ord(ch):04X})"
    return None


def validate_identifier(name: str, value: Any) -> str:
    """Return ``value`` if it is a valid identifier, else raise ``IDENTIFIER_INVALID``."""
    problem = identifier_problem(value)
    if problem is not None:
        shown = value[:60] + "..." if isinstance(value, str) and len(value) > 60 else value
        raise IdentifierInvalid(
            f"{name} {problem}",
            details={"field": name, "value": repr(shown), "problem": problem},
        )
    return str(value)
