"""API keys and idempotency records on PostgreSQL (migration 0004), next to the run store.

It opens its own small pool on the store's URL and schema, so the run store's modules stay
untouched; migrations are applied by whichever of the two opens first (they are idempotent and
serialised by an advisory lock).
"""

from __future__ import annotations

import json
from datetime import UTC, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from dvt_engine.access import (
    IDEMPOTENCY_LOCK_TTL,
    ApiKey,
    ApiKeyStore,
    ApiRole,
    IdempotencyClaim,
    IdempotencyStore,
    StoredResponse,
    TenantPlans,
)
from dvt_statestore_pg.side_store import SideStore

_T = TypeVar("_T")
Conn = psycopg.AsyncConnection[Any]
_KEY_COLUMNS = "key_id, key_hash, tenant_id, roles, name, created_at, revoked_at"


def _key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(key_id=row[0], key_hash=row[1], tenant_id=row[2],
                  roles=tuple(ApiRole(r) for r in row[3]), name=row[4],
                  created_at=row[5].astimezone(UTC),
                  revoked_at=row[6].astimezone(UTC) if row[6] else None)


class PostgresAccessStore(SideStore, ApiKeyStore, IdempotencyStore, TenantPlans):
    """The access ports on PostgreSQL; ``await PostgresAccessStore.open(url)``."""

    purpose = "access"

    @classmethod
    async def open(cls, url: str) -> PostgresAccessStore:
        """Connect and bring the schema up to date."""
        store = cls(url)
        await store._ensure_open()
        return store

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._schema)

    # --- API keys ------------------------------------------------------------------------
    async def create_key(self, key: ApiKey) -> None:
        """Store a new key record."""
        query = self._q("INSERT INTO {s}.dvt_api_keys (key_id, key_hash, tenant_id, roles, name,"
                        " created_at) VALUES (%s, %s, %s, %s, %s, %s)")

        async def work(conn: Conn) -> None:
            await conn.execute(query, (key.key_id, key.key_hash, key.tenant_id,
                                       [r.value for r in key.roles], key.name, key.created_at))

        await self._run(work)

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key stored under a hash, or None."""
        query = self._q(f"SELECT {_KEY_COLUMNS} FROM {{s}}.dvt_api_keys WHERE key_hash = %s")

        async def work(conn: Conn) -> ApiKey | None:
            row = await (await conn.execute(query, (key_hash,))).fetchone()
            return _key(row) if row else None

        return await self._run(work)

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        """Every key of a tenant, oldest first."""
        query = self._q(f"SELECT {_KEY_COLUMNS} FROM {{s}}.dvt_api_keys WHERE tenant_id = %s"
                        " ORDER BY created_at, key_id")

        async def work(conn: Conn) -> list[ApiKey]:
            return [_key(r) for r in await (await conn.execute(query, (tenant_id,))).fetchall()]

        return await self._run(work)

    async def revoke_key(self, tenant_id: str, key_id: str) -> bool:
        """Revoke a key of this tenant at once (the next lookup sees it revoked)."""
        query = self._q("UPDATE {s}.dvt_api_keys SET revoked_at = coalesce(revoked_at,"
                        " clock_timestamp()) WHERE tenant_id = %s AND key_id = %s RETURNING 1")

        async def work(conn: Conn) -> bool:
            return await (await conn.execute(query, (tenant_id, key_id))).fetchone() is not None

        return await self._run(work)

    # --- plans of a tenant ---------------------------------------------------------------
    async def remember_plan(self, tenant_id: str, sha256: str) -> bool:
        """Record the tenant's plan; True when new."""
        query = self._q("INSERT INTO {s}.dvt_tenant_plans (tenant_id, sha256) VALUES (%s, %s)"
                        " ON CONFLICT DO NOTHING RETURNING 1")

        async def work(conn: Conn) -> bool:
            return await (await conn.execute(query, (tenant_id, sha256))).fetchone() is not None

        return await self._run(work)

    async def has_plan(self, tenant_id: str, sha256: str) -> bool:
        """Whether the tenant stored the plan."""
        query = self._q("SELECT 1 FROM {s}.dvt_tenant_plans WHERE tenant_id = %s AND sha256 = %s")

        async def work(conn: Conn) -> bool:
            return await (await conn.execute(query, (tenant_id, sha256))).fetchone() is not None

        return await self._run(work)

    # --- idempotency ---------------------------------------------------------------------
    async def claim(self, tenant_id: str, key: str, request_hash: str, *,
                    ttl: timedelta) -> IdempotencyClaim:
        """One statement decides the winner: INSERT ... ON CONFLICT takes over only an expired
        row or an abandoned lock; a loser reads the row the winner wrote."""
        upsert = self._q(
            "INSERT INTO {s}.dvt_idempotency_keys AS k (tenant_id, idem_key, request_hash,"
            " locked_at, expires_at) VALUES (%(t)s, %(k)s, %(h)s, clock_timestamp(),"
            " clock_timestamp() + %(ttl)s)"
            " ON CONFLICT (tenant_id, idem_key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
            " locked_at = EXCLUDED.locked_at, expires_at = EXCLUDED.expires_at,"
            " response_status = NULL, response_body = NULL, response_headers = NULL"
            " WHERE k.expires_at <= clock_timestamp() OR (k.response_status IS NULL"
            " AND k.request_hash = EXCLUDED.request_hash AND k.locked_at < clock_timestamp()"
            " - %(lock)s) RETURNING 1")
        read = self._q("SELECT request_hash, response_status, response_body, response_headers"
                       " FROM {s}.dvt_idempotency_keys WHERE tenant_id = %s AND idem_key = %s")

        async def work(conn: Conn) -> IdempotencyClaim:
            params = {"t": tenant_id, "k": key, "h": request_hash, "ttl": ttl,
                      "lock": IDEMPOTENCY_LOCK_TTL}
            if await (await conn.execute(upsert, params)).fetchone() is not None:
                return IdempotencyClaim("new")
            row = await (await conn.execute(read, (tenant_id, key))).fetchone()
            if row is None:  # expired and purged between the two statements: claim again
                return await work(conn)
            if row[0] != request_hash:
                return IdempotencyClaim("mismatch")
            if row[1] is None:
                return IdempotencyClaim("in_flight")
            raw = row[3] if not isinstance(row[3], str) else json.loads(row[3])
            headers = tuple((str(n), str(v)) for n, v in raw or [])
            return IdempotencyClaim("done", StoredResponse(int(row[1]), bytes(row[2]), headers))

        return await self._run(work)

    async def complete(self, tenant_id: str, key: str, response: StoredResponse) -> None:
        """Record the first answer."""
        query = self._q("UPDATE {s}.dvt_idempotency_keys SET response_status = %s,"
                        " response_body = %s, response_headers = %s, locked_at = NULL"
                        " WHERE tenant_id = %s AND idem_key = %s")

        async def work(conn: Conn) -> None:
            await conn.execute(query, (response.status, response.body,
                                       json.dumps([list(h) for h in response.headers]),
                                       tenant_id, key))

        await self._run(work)

    async def release(self, tenant_id: str, key: str) -> None:
        """Forget an unfinished claim."""
        query = self._q("DELETE FROM {s}.dvt_idempotency_keys WHERE tenant_id = %s"
                        " AND idem_key = %s AND response_status IS NULL")

        async def work(conn: Conn) -> None:
            await conn.execute(query, (tenant_id, key))

        await self._run(work)

    async def purge_expired(self) -> int:
        """Delete expired idempotency records; the number deleted."""
        query = self._q("DELETE FROM {s}.dvt_idempotency_keys"
                        " WHERE expires_at <= clock_timestamp()")

        async def work(conn: Conn) -> int:
            cur = await conn.execute(query)
            return cur.rowcount

        return await self._run(work)
