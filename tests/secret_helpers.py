"""A secrets scan for tests and CI: assert that no credential reached events, snapshots or logs.

It applies the same rule table as plan validation and event redaction
(dvt_engine.secret_scan), and also looks for the exact secret strings a test planted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from dvt_engine.secret_scan import find_secrets, text_secret_rule


def _as_data(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True)
    return value


def secret_findings(value: Any, known: Iterable[str] = ()) -> list[str]:
    """Where ``value`` (JSON-like data, a model, or text) holds a secret: ``path: rule`` lines."""
    data = _as_data(value)
    found: list[str] = []
    if isinstance(data, str):
        for number, line in enumerate(data.splitlines(), 1):
            rule = text_secret_rule(line)
            if rule is not None:
                found.append(f"line {number}: {rule}")
        text = data
    else:
        found += [f"{f.path or '/'}: {f.rule}" for f in find_secrets(data)]
        text = json.dumps(data, default=str)
    found += [f"known secret #{i}" for i, secret in enumerate(known) if secret and secret in text]
    return found


def assert_no_secrets(*values: Any, known: Iterable[str] = ()) -> None:
    """Fail, naming where (never what), when any value holds a credential."""
    planted = tuple(known)
    for index, value in enumerate(values):
        findings = secret_findings(value, planted)
        assert not findings, f"value #{index} holds secrets at: {findings}"
