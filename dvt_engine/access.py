"""Service access: API keys (tenant + roles) and idempotency records, as two small ports.

The HTTP service (dvt_api) authenticates every request with an API key and replays idempotent
requests; both need durable state next to the run store. The ports live in the core so a store
package implements them beside its run store (memory and PostgreSQL do), and so the rules (key
shape, hashing, the TTL floor) live in one place.

A key is ``dvt_sk_`` plus 32 random bytes (256 bits) in base64url. Only its sha256 is stored:
for a secret with that much entropy a fast hash is enough (a slow password hash such as argon2
or bcrypt only protects low-entropy secrets against guessing, and would cost every request
tens of milliseconds). Lookups go by the hash, and the stored hash is compared again in
constant time.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from dvt_engine.errors import UsageError

KEY_PREFIX = "dvt_sk_"
KEY_ID_PREFIX = "key_"
KEY_BYTES = 32
#: Idempotency keys are kept this long by default, and never less than MIN_IDEMPOTENCY_TTL.
DEFAULT_IDEMPOTENCY_TTL = timedelta(days=30)
MIN_IDEMPOTENCY_TTL = timedelta(hours=24)
#: An in-flight record older than this belongs to a request whose process died: it is taken over.
IDEMPOTENCY_LOCK_TTL = timedelta(seconds=60)


class ApiRole(StrEnum):
    """Roles of an API key; each names what it allows, and ``admin`` implies no other."""

    READER = "reader"
    RUNNER = "runner"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMIN = "admin"
    AUDITOR = "auditor"


def parse_api_roles(values: Sequence[str]) -> tuple[ApiRole, ...]:
    """Roles from names (``reader``, ...); USAGE_ERROR for an unknown one or none at all."""
    roles: list[ApiRole] = []
    for value in values:
        try:
            roles.append(ApiRole(value.strip().lower()))
        except ValueError:
            raise UsageError(f"unknown role {value!r}",
                             details={"role": value, "known": [r.value for r in ApiRole]}
                             ) from None
    if not roles:
        raise UsageError("a key needs at least one role",
                         details={"known": [r.value for r in ApiRole]})
    return tuple(dict.fromkeys(roles))


@dataclass(frozen=True)
class ApiKey:
    """A stored key: never the secret itself, only its hash."""

    key_id: str
    tenant_id: str
    roles: tuple[ApiRole, ...]
    key_hash: str
    created_at: datetime
    name: str | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        """False once revoked."""
        return self.revoked_at is None


def hash_api_key(key: str) -> str:
    """The stored form of a key: hex sha256 of its text."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def hashes_match(stored: str, presented: str) -> bool:
    """Constant-time comparison of two key hashes."""
    return hmac.compare_digest(stored.encode(), presented.encode())


def mint_api_key() -> tuple[str, str]:
    """A new ``(key_id, key)``: the id is public, the key is shown once and never stored."""
    return KEY_ID_PREFIX + secrets.token_hex(8), KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def looks_like_api_key(text: str) -> bool:
    """Cheap shape check before any lookup (prefix, length, URL-safe alphabet)."""
    body = text[len(KEY_PREFIX):]
    return (text.startswith(KEY_PREFIX) and 20 <= len(body) <= 100
            and all(c.isalnum() or c in "-_" for c in body) and body.isascii())


class ApiKeyStore(abc.ABC):
    """Durable API keys: create, look up by hash, list per tenant, revoke."""

    @abc.abstractmethod
    async def create_key(self, key: ApiKey) -> None:
        """Store a new key record (its key_id is new)."""

    @abc.abstractmethod
    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key stored under a hash, revoked or not, or None."""

    @abc.abstractmethod
    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        """Every key of a tenant, oldest first."""

    @abc.abstractmethod
    async def revoke_key(self, tenant_id: str, key_id: str) -> bool:
        """Revoke a key of this tenant at once; False when the tenant has no such key."""


class TenantPlans(abc.ABC):
    """Which tenant stored which plan: the plan registry is shared and content-addressed, so
    the service answers a plan only to a tenant that stored (or ran) it."""

    @abc.abstractmethod
    async def remember_plan(self, tenant_id: str, sha256: str) -> bool:
        """Record that the tenant has the plan; True when it had not before."""

    @abc.abstractmethod
    async def has_plan(self, tenant_id: str, sha256: str) -> bool:
        """Whether the tenant stored the plan."""


@dataclass(frozen=True)
class StoredResponse:
    """The first answer to an idempotent request, replayed for its repeats."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class IdempotencyClaim:
    """What ``claim`` found: ``new`` (the caller owns the key now), ``in_flight``,
    ``mismatch`` (another request body used it) or ``done`` (with the first response)."""

    state: Literal["new", "in_flight", "mismatch", "done"]
    response: StoredResponse | None = field(default=None)


class IdempotencyStore(abc.ABC):
    """Per-tenant idempotency keys: the first request claims a key, repeats replay its answer."""

    @abc.abstractmethod
    async def claim(self, tenant_id: str, key: str, request_hash: str, *,
                    ttl: timedelta) -> IdempotencyClaim:
        """Claim ``key`` for a request atomically (concurrent claims: exactly one is ``new``)."""

    @abc.abstractmethod
    async def complete(self, tenant_id: str, key: str, response: StoredResponse) -> None:
        """Record the answer of the request that claimed ``key``."""

    @abc.abstractmethod
    async def release(self, tenant_id: str, key: str) -> None:
        """Forget an unfinished claim (the request failed without an answer worth keeping)."""

    @abc.abstractmethod
    async def purge_expired(self) -> int:
        """Delete records past their TTL (a claim takes an expired key over anyway); how many."""


def check_idempotency_ttl(ttl: timedelta) -> timedelta:
    """The TTL, or USAGE_ERROR when it is under the 24-hour floor."""
    if ttl < MIN_IDEMPOTENCY_TTL:
        raise UsageError("idempotency keys are kept at least 24 hours",
                         details={"ttlSeconds": ttl.total_seconds()})
    return ttl
