"""In-memory API keys and idempotency records, for tests and `dvt serve --dev`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from dvt_engine.access import (
    IDEMPOTENCY_LOCK_TTL,
    ApiKey,
    ApiKeyStore,
    IdempotencyClaim,
    IdempotencyStore,
    StoredResponse,
    TenantPlans,
)
from dvt_engine.eventlog import utc_now


@dataclass
class _Record:
    request_hash: str
    expires_at: datetime
    locked_at: datetime | None
    response: StoredResponse | None = None


class MemoryAccessStore(ApiKeyStore, IdempotencyStore, TenantPlans):
    """The access ports in process memory; lost when the process ends."""

    def __init__(self) -> None:
        self._keys: dict[str, ApiKey] = {}
        self._records: dict[tuple[str, str], _Record] = {}
        self._lock = asyncio.Lock()
        self._plans: set[tuple[str, str]] = set()

    async def remember_plan(self, tenant_id: str, sha256: str) -> bool:
        """Record the tenant's plan; True when new."""
        new = (tenant_id, sha256) not in self._plans
        self._plans.add((tenant_id, sha256))
        return new

    async def has_plan(self, tenant_id: str, sha256: str) -> bool:
        """Whether the tenant stored the plan."""
        return (tenant_id, sha256) in self._plans

    async def create_key(self, key: ApiKey) -> None:
        """Store a new key record."""
        self._keys[key.key_hash] = key

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key stored under a hash, or None."""
        return self._keys.get(key_hash)

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        """Every key of a tenant, oldest first."""
        found = [k for k in self._keys.values() if k.tenant_id == tenant_id]
        return sorted(found, key=lambda k: (k.created_at, k.key_id))

    async def revoke_key(self, tenant_id: str, key_id: str) -> bool:
        """Revoke a key of this tenant; False when it has none with that id."""
        for hashed, key in self._keys.items():
            if key.key_id == key_id and key.tenant_id == tenant_id:
                if key.revoked_at is None:
                    self._keys[hashed] = replace(key, revoked_at=utc_now())
                return True
        return False

    async def claim(self, tenant_id: str, key: str, request_hash: str, *,
                    ttl: timedelta) -> IdempotencyClaim:
        """Claim a key atomically under the store's lock."""
        async with self._lock:
            now = utc_now()
            record = self._records.get((tenant_id, key))
            if record is not None and record.expires_at <= now:
                record = None
            if record is None:
                self._records[(tenant_id, key)] = _Record(request_hash, now + ttl, now)
                return IdempotencyClaim("new")
            if record.request_hash != request_hash:
                return IdempotencyClaim("mismatch")
            if record.response is not None:
                return IdempotencyClaim("done", record.response)
            if record.locked_at is not None and now - record.locked_at < IDEMPOTENCY_LOCK_TTL:
                return IdempotencyClaim("in_flight")
            record.locked_at = now
            return IdempotencyClaim("new")

    async def complete(self, tenant_id: str, key: str, response: StoredResponse) -> None:
        """Record the first answer."""
        async with self._lock:
            record = self._records.get((tenant_id, key))
            if record is not None:
                record.response, record.locked_at = response, None

    async def release(self, tenant_id: str, key: str) -> None:
        """Forget an unfinished claim."""
        async with self._lock:
            record = self._records.get((tenant_id, key))
            if record is not None and record.response is None:
                del self._records[(tenant_id, key)]

    async def purge_expired(self) -> int:
        """Delete records past their TTL."""
        async with self._lock:
            now = utc_now()
            gone = [k for k, r in self._records.items() if r.expires_at <= now]
            for k in gone:
                del self._records[k]
            return len(gone)
