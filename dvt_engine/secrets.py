"""Secrets providers and secret references inside step params.

A plan holds references only (``{"secretRef": "env:DB_PASSWORD"}``). The step runner resolves
them through a SecretsProvider when a handler asks, and masks every resolved value before
anything reaches an event, a log line or a span.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from dvt_engine.errors import SecretNotFound
from dvt_engine.ports import SecretsProvider
from dvt_engine.secret_scan import REDACTED, SECRET_REF_KEY, secret_ref_of

__all__ = [
    "REDACTED",
    "SECRET_REF_KEY",
    "EnvSecretsProvider",
    "MappingSecretsProvider",
    "redact",
    "resolve_refs",
    "secret_ref_of",
]

ENV_SCHEME = "env:"


class EnvSecretsProvider(SecretsProvider):
    """Resolves ``env:NAME`` references from the process environment.

    ``prefix`` limits which variables a plan may name (``prefix="DVT_SECRET_"`` lets
    ``env:DVT_SECRET_DB`` resolve and refuses ``env:HOME``); the default allows any name.
    """

    def __init__(self, *, prefix: str = "", environ: Mapping[str, str] | None = None) -> None:
        self.prefix = prefix
        self._environ = environ

    async def resolve(self, ref: str) -> str:
        """The value of the environment variable named by ``env:NAME``."""
        if not ref.startswith(ENV_SCHEME):
            raise SecretNotFound(
                f"secret reference {ref!r} is not an env: reference",
                details={"ref": ref, "supported": [ENV_SCHEME]},
            )
        name = ref[len(ENV_SCHEME):]
        if not name or not name.startswith(self.prefix):
            raise SecretNotFound(
                f"secret reference {ref!r} names no readable variable",
                details={"ref": ref, "prefix": self.prefix},
            )
        environ = os.environ if self._environ is None else self._environ
        value = environ.get(name)
        if value is None:
            raise SecretNotFound(f"environment variable for {ref!r} is not set",
                                 details={"ref": ref})
        return value


class MappingSecretsProvider(SecretsProvider):
    """Resolves references from a fixed mapping of ref to value (tests and embedding hosts)."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self._secrets = dict(secrets)

    async def resolve(self, ref: str) -> str:
        """The value stored under ``ref``."""
        try:
            return self._secrets[ref]
        except KeyError:
            raise SecretNotFound(f"no secret under {ref!r}", details={"ref": ref}) from None


async def resolve_refs(value: Any, resolve: Callable[[str], Awaitable[str]]) -> Any:
    """A deep copy of ``value`` with every ``{"secretRef": ...}`` replaced by its secret."""
    ref = secret_ref_of(value)
    if ref is not None:
        return await resolve(ref)
    if isinstance(value, Mapping):
        return {k: await resolve_refs(v, resolve) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [await resolve_refs(v, resolve) for v in value]
    return value


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """A copy of JSON-like ``value`` with every occurrence of a secret string masked."""
    # Longest first, so a secret that contains a shorter one is masked whole.
    ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not ordered:
        return value
    return _redact(value, ordered)


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, Mapping):
        return {_redact(k, secrets): _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, secrets) for v in value]
    return value
