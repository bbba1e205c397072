"""Finding and masking secret-looking values: one rule table for plan validation, events and tests.

Plans must hold secret references (``{"secretRef": "env:NAME"}``), never the secret itself.
``find_secrets`` says where a JSON-like value holds something that looks like a credential
(by the key it sits under, or by the value's own shape) without ever returning the value;
``redact_secrets`` returns a copy with those parts replaced by ``***``. The rules follow the
well-known patterns of detect-secrets and gitleaks (AWS keys, PEM private keys, JWTs, bearer
tokens, passwords in URLs, a few vendor token prefixes); they are kept here as a small table so
the pure core needs no scanner dependency on the event path.

``python -m dvt_engine.secret_scan FILE...`` scans text files (logs, event dumps) and exits 1
when anything matches, for CI.
"""

from __future__ import annotations

import functools
import itertools
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REDACTED = "***"
SECRET_REF_KEY = "secretRef"
MAX_REDACTION_PASSES = 8


@dataclass(frozen=True)
class SecretFinding:
    """Where a secret-looking value is (a JSON Pointer) and which rule matched; never the value."""

    path: str
    rule: str


# --- value rules: each regex's group 1 (or the whole match) is the secret part ----------------

_VALUE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "private key",
        re.compile(
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
            re.DOTALL,
        ),
    ),
    (
        "AWS access key id",
        re.compile(r"(?<![A-Z0-9])(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])"),
    ),
    (
        "JWT",
        re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    ),
    ("bearer token", re.compile(r"(?i)(?<![a-z0-9])bearer\s+([A-Za-z0-9._~+/-]{8,}=*)")),
    ("password in URL", re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]+:([^\s/?#@]+)@")),
    ("GitHub token", re.compile(r"(?<![A-Za-z0-9])gh[pousr]_[A-Za-z0-9]{36,}")),
    ("Slack token", re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}")),
    ("Google API key", re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{35}")),
    ("Stripe key", re.compile(r"(?<![A-Za-z0-9])[rs]k_live_[0-9A-Za-z]{16,}")),
)  # fmt: skip
# Forty base64 characters mixing cases and digits: the shape of an AWS secret access key. Found
# by scanning maximal runs (linear), not by a 40-wide regex tried at every position.
AWS_SECRET_RULE = "AWS secret access key"
_BASE64_RUN = re.compile(r"[A-Za-z0-9/+]{40,}")
_MIXED = (re.compile(r"[a-z]"), re.compile(r"[A-Z]"), re.compile(r"[0-9]"))
# Cheap gate: a string without any of these cannot match a value rule.
_MAYBE = re.compile(
    r"-----BEGIN|A3T|AKIA|ASIA|ABIA|ACCA|eyJ|(?i:bearer)|://|gh[pousr]_|xox|AIza|k_live_"
)

# --- key rule: a string value under a key named like a credential ---------------------------

_SECRET_WORDS = frozenset(
    {"password", "passwd", "passphrase", "pwd", "secret", "token",
     "apikey", "credential", "credentials", "privatekey", "secretkey", "accesskey",
     "clientsecret", "authtoken", "sessiontoken", "connectionstring"}
)  # fmt: skip
_SECRET_PAIRS = frozenset(
    {("api", "key"), ("private", "key"), ("secret", "key"), ("access", "key"),
     ("client", "secret"), ("auth", "token"), ("session", "token"), ("connection", "string"),
     ("signing", "key"), ("encryption", "key")}
)  # fmt: skip
# A key ending in one of these names something about a secret (where it is, its size), not it.
_NOT_SECRET_SUFFIXES = frozenset(
    {"ref", "refs", "name", "names", "env", "var", "file", "path", "url", "uri", "id", "ids",
     "type", "kind", "count", "length", "ttl", "expiry", "expires", "header", "field", "mode",
     "policy", "required", "enabled", "provider", "endpoint", "version", "limit"}
)  # fmt: skip
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


@functools.lru_cache(maxsize=4096)
def key_looks_secret(key: str) -> bool:
    """True when a mapping key names a credential (``password``, ``apiKey``, ``client_secret``)."""
    words = [w.lower() for w in _WORD.findall(key)]
    if not words or words[-1] in _NOT_SECRET_SUFFIXES:
        return False
    if any(w in _SECRET_WORDS for w in words) or "".join(words) in _SECRET_WORDS:
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def _secret_spans(text: str) -> Iterator[tuple[str, int, int]]:
    """(rule, start, end) of every secret-looking part of ``text``."""
    if _MAYBE.search(text):
        for rule, pattern in _VALUE_RULES:
            for match in pattern.finditer(text):
                group = 1 if pattern.groups else 0
                if match.group(group) != REDACTED:
                    yield rule, *match.span(group)
    for run in _BASE64_RUN.finditer(text):
        candidate = run.group(0)
        if len(candidate) == 40 and all(p.search(candidate) for p in _MIXED):
            yield AWS_SECRET_RULE, *run.span(0)


def text_secret_rule(text: str) -> str | None:
    """The first rule a text matches by its own shape, or None."""
    return next((rule for rule, _, _ in _secret_spans(text)), None)


def secret_ref_of(value: Any) -> str | None:
    """The reference when ``value`` is exactly ``{"secretRef": "<ref>"}``, else None."""
    if isinstance(value, Mapping) and len(value) == 1:
        ref = value.get(SECRET_REF_KEY)
        if isinstance(ref, str) and ref:
            return ref
    return None


def _pointer(path: Sequence[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def find_secrets(value: Any, path: Sequence[str | int] = ()) -> list[SecretFinding]:
    """Every secret-looking literal inside JSON-like ``value``, as JSON Pointers and rule names."""
    found: list[SecretFinding] = []
    _find(value, tuple(path), None, found)
    return found


def _find(value: Any, path: tuple[str | int, ...], key_rule: str | None,
          found: list[SecretFinding]) -> None:  # fmt: skip
    if secret_ref_of(value) is not None:
        return
    if isinstance(value, str):
        rule = text_secret_rule(value)
        if rule is None and key_rule is not None and value and value != REDACTED:
            rule = key_rule
        if rule is not None:
            found.append(SecretFinding(_pointer(path), rule))
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key)
            if text_secret_rule(name) is not None:
                found.append(SecretFinding(_pointer((*path, name)), "secret in a key"))
            rule = f"key named {name[:40]!r}" if key_looks_secret(name) else None
            _find(item, (*path, name), rule, found)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            # A list directly under a secret-named key holds secrets too.
            _find(item, (*path, i), key_rule, found)


def redact_text(text: str) -> str:
    """``text`` with every part a value rule matches replaced by ``***``."""
    for _ in range(MAX_REDACTION_PASSES):
        spans = sorted((start, end) for _, start, end in _secret_spans(text))
        if not spans:
            return text
        merged: list[list[int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out: list[str] = []
        last = 0
        for start, end in merged:
            out += [text[last:start], REDACTED]
            last = end
        out.append(text[last:])
        text = "".join(out)
    # Redaction kept finding new matches: give up on the text rather than leak part of it.
    return text if text_secret_rule(text) is None else REDACTED


def redact_secrets(value: Any) -> Any:
    """A copy of JSON-like ``value`` with secret-looking strings and secret-named values masked."""
    return _redact(value, secret_key=False)


def _redact(value: Any, *, secret_key: bool) -> Any:
    if isinstance(value, str):
        if secret_key and value:
            return REDACTED
        return redact_text(value)
    if secret_ref_of(value) is not None:
        return dict(value)
    if isinstance(value, Mapping):
        return {
            (redact_text(k) if isinstance(k, str) else k): _redact(
                v, secret_key=isinstance(k, str) and key_looks_secret(k)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v, secret_key=secret_key) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Scan text files for secret-looking values; print ``file:line: rule`` and exit 1 on any."""
    hits = 0
    for name in argv if argv is not None else sys.argv[1:]:
        with open(name, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                rule = text_secret_rule(line)
                if rule is not None:
                    hits += 1
                    print(f"{name}:{number}: {rule}")
    return 1 if hits else 0


if __name__ == "__main__":
    raise SystemExit(main())
