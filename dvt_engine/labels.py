"""Run labels: the one definition of a label and of a label filter.

A run carries a small flat map of labels chosen when it starts (``team: data``,
``trigger: cron``), kept in its header and listed with it. The rules follow what users of
Kubernetes labels and Stripe metadata expect: at most 20 labels; keys of 1-63 characters, lower
case letters, digits and ``_ . - /``, starting with a letter or digit (so ``app.kubernetes.io/name``
style keys fit, and a filter never depends on case); values are strings of at most 200
characters without control characters. A label is not a place for a secret: a key named like
a credential (``db_password``, ``api_key``) or a value shaped like one (an AWS key, a JWT) is
refused, like a plan's params are.

A label filter is written ``key:value`` (split at the first ``:``, which no key holds); every
given pair must match.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from dvt_engine.errors import LabelsInvalid
from dvt_engine.secret_scan import key_looks_secret, text_secret_rule

MAX_LABELS = 20
MAX_KEY_LENGTH = 63
MAX_VALUE_LENGTH = 200
KEY_PATTERN = r"^[a-z0-9][a-z0-9_./-]{0,62}$"
FILTER_SEPARATOR = ":"
_KEY = re.compile(KEY_PATTERN)
#: The shape of a labels object in JSON Schema (the secret rules cannot be said there).
LABELS_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": MAX_LABELS,
    "propertyNames": {"pattern": KEY_PATTERN},
    "additionalProperties": {"type": "string", "maxLength": MAX_VALUE_LENGTH},
}


def key_problem(key: Any) -> str | None:
    """What is wrong with a label key, or None (never echoes the key)."""
    if not isinstance(key, str):
        return "a label key must be a string"
    if not _KEY.match(key):
        return (f"a label key is 1-{MAX_KEY_LENGTH} of a-z 0-9 _ . - / and starts with a"
                " letter or digit")
    if key_looks_secret(key):
        return "a label key may not name a secret (password, token, key, ...)"
    return None


def value_problem(value: Any) -> str | None:
    """What is wrong with a label value, or None (never echoes the value)."""
    if not isinstance(value, str):
        return "a label value must be a string"
    if len(value) > MAX_VALUE_LENGTH:
        return f"a label value is at most {MAX_VALUE_LENGTH} characters"
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        return "a label value may not contain control characters"
    rule = text_secret_rule(value)
    if rule is not None:
        return f"a label value may not hold a secret ({rule})"
    return None


def label_problems(labels: Any, path: str = "labels") -> list[dict[str, str]]:
    """Every rule ``labels`` breaks, as ``{path, message}`` items (empty when valid)."""
    if not isinstance(labels, Mapping):
        return [{"path": path, "message": "labels are an object of string keys and values"}]
    problems: list[dict[str, str]] = []
    if len(labels) > MAX_LABELS:
        problems.append({"path": path, "message": f"at most {MAX_LABELS} labels"})
    for index, (key, value) in enumerate(labels.items(), start=1):
        problem = key_problem(key)
        if problem is not None:
            problems.append({"path": path, "message": f"label #{index}: {problem}"})
            continue
        problem = value_problem(value)
        if problem is not None:
            problems.append({"path": f"{path}/{key}", "message": problem})
    return problems


def validate_labels(labels: Mapping[str, str] | None, path: str = "labels") -> dict[str, str]:
    """The labels sorted by key, or LABELS_INVALID naming every rule they break."""
    if labels is None:
        return {}
    problems = label_problems(labels, path)
    if problems:
        raise LabelsInvalid(f"{len(problems)} label problem(s): {problems[0]['message']}",
                            details={"errors": problems})
    return dict(sorted(labels.items()))


def parse_label_pairs(items: Iterable[str], path: str = "label") -> dict[str, str]:
    """``key:value`` items (a filter, or labels given on a command line) as a map.

    LABELS_INVALID when an item is not ``key:value`` under the label rules, or names a key
    twice with different values.
    """
    wanted: dict[str, str] = {}
    problems: list[dict[str, str]] = []
    for index, item in enumerate(items, start=1):
        key, separator, value = item.partition(FILTER_SEPARATOR)
        problem = ("not key:value" if not separator
                   else key_problem(key) or value_problem(value))
        if problem is None and wanted.get(key, value) != value:
            problem = "a label key is given twice with different values"
        if problem is not None:
            problems.append({"path": path, "message": f"item #{index}: {problem}"})
        else:
            wanted[key] = value
    if len(wanted) > MAX_LABELS:
        problems.append({"path": path, "message": f"at most {MAX_LABELS} labels"})
    if problems:
        raise LabelsInvalid(f"{len(problems)} label problem(s): {problems[0]['message']}",
                            details={"errors": problems})
    return dict(sorted(wanted.items()))


def matches(labels: Mapping[str, str], wanted: Mapping[str, str] | None) -> bool:
    """Whether a run's labels hold every pair of the filter."""
    return not wanted or all(labels.get(k) == v for k, v in wanted.items())
