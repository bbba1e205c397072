"""The webhook port on PostgreSQL: subscriptions and deliveries (migration 0005).

Due deliveries are leased with ``FOR UPDATE SKIP LOCKED``, so several service processes on one
database share the sending without handing one delivery to two of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from dvt_engine.webhooks import Delivery, DeliveryStatus, Webhook, WebhookStore
from dvt_statestore_pg.access import Conn, PostgresAccessStore

_HOOK_COLUMNS = ("webhook_id, tenant_id, url, events, secrets, created_at, description,"
                 " disabled_at, disabled_reason, failing_since")
_DELIVERY_COLUMNS = ("delivery_id, webhook_id, tenant_id, event_type, run_id, source, payload,"
                     " created_at, status, attempts, last_status_code, next_attempt_at")


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _hook(row: Sequence[Any]) -> Webhook:
    return Webhook(webhook_id=row[0], tenant_id=row[1], url=row[2], events=tuple(row[3]),
                   secrets=tuple(row[4]), created_at=row[5].astimezone(UTC), description=row[6],
                   disabled_at=_utc(row[7]), disabled_reason=row[8], failing_since=_utc(row[9]))


def _delivery(row: Sequence[Any]) -> Delivery:
    payload = row[6] if not isinstance(row[6], str) else json.loads(row[6])
    return Delivery(delivery_id=row[0], webhook_id=row[1], tenant_id=row[2], event_type=row[3],
                    run_id=row[4], source=row[5], payload=payload,
                    created_at=row[7].astimezone(UTC), status=DeliveryStatus(row[8]),
                    attempts=int(row[9]), last_status_code=row[10],
                    next_attempt_at=_utc(row[11]))


class PostgresWebhookStore(PostgresAccessStore, WebhookStore):
    """Subscriptions and deliveries on the access store's pool and schema."""

    @classmethod
    async def open(cls, url: str) -> PostgresWebhookStore:
        """Connect and bring the schema up to date."""
        store = cls(url)
        await store._ensure_open()
        return store

    async def _fetch(self, query: str, params: Sequence[Any] | dict[str, Any]
                     ) -> list[tuple[Any, ...]]:
        statement = self._q(query)

        async def work(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(statement, params)
            return list(await cur.fetchall()) if cur.description else []

        return await self._run(work)

    async def create_webhook(self, webhook: Webhook) -> None:
        """Store a new subscription."""
        await self._fetch(
            f"INSERT INTO {{s}}.dvt_webhooks ({_HOOK_COLUMNS}) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (webhook.webhook_id, webhook.tenant_id, webhook.url, list(webhook.events),
             list(webhook.secrets), webhook.created_at, webhook.description,
             webhook.disabled_at, webhook.disabled_reason, webhook.failing_since))

    async def get_webhook(self, tenant_id: str, webhook_id: str) -> Webhook | None:
        """A subscription of this tenant, or None."""
        rows = await self._fetch(f"SELECT {_HOOK_COLUMNS} FROM {{s}}.dvt_webhooks"
                                 " WHERE tenant_id = %s AND webhook_id = %s",
                                 (tenant_id, webhook_id))
        return _hook(rows[0]) if rows else None

    async def list_webhooks(self, tenant_id: str) -> list[Webhook]:
        """Every subscription of a tenant, oldest first."""
        rows = await self._fetch(f"SELECT {_HOOK_COLUMNS} FROM {{s}}.dvt_webhooks"
                                 " WHERE tenant_id = %s ORDER BY created_at, webhook_id",
                                 (tenant_id,))
        return [_hook(r) for r in rows]

    async def delete_webhook(self, tenant_id: str, webhook_id: str) -> bool:
        """Delete a subscription; its deliveries go with it (ON DELETE CASCADE)."""
        rows = await self._fetch("DELETE FROM {s}.dvt_webhooks WHERE tenant_id = %s"
                                 " AND webhook_id = %s RETURNING 1", (tenant_id, webhook_id))
        return bool(rows)

    async def update_webhook(self, webhook: Webhook) -> None:
        """Store a subscription's secrets, failure start and disabled state."""
        await self._fetch(
            "UPDATE {s}.dvt_webhooks SET secrets = %s, failing_since = %s, disabled_at = %s,"
            " disabled_reason = %s WHERE webhook_id = %s AND tenant_id = %s",
            (list(webhook.secrets), webhook.failing_since, webhook.disabled_at,
             webhook.disabled_reason, webhook.webhook_id, webhook.tenant_id))

    async def subscribers(self, tenant_id: str, webhook_event: str) -> list[Webhook]:
        """Active subscriptions of a tenant wanting ``webhook_event``."""
        rows = await self._fetch(f"SELECT {_HOOK_COLUMNS} FROM {{s}}.dvt_webhooks"
                                 " WHERE tenant_id = %s AND disabled_at IS NULL"
                                 " AND %s = ANY(events) ORDER BY created_at",
                                 (tenant_id, webhook_event))
        return [_hook(r) for r in rows]

    async def add_deliveries(self, deliveries: Sequence[Delivery]) -> int:
        """Insert deliveries; a (webhook, source) seen before is skipped."""
        statement = self._q(
            f"INSERT INTO {{s}}.dvt_webhook_deliveries ({_DELIVERY_COLUMNS}) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (webhook_id, source) DO NOTHING RETURNING 1")

        async def work(conn: Conn) -> int:
            added = 0
            async with conn.transaction():
                for d in deliveries:
                    cur = await conn.execute(statement, (
                        d.delivery_id, d.webhook_id, d.tenant_id, d.event_type, d.run_id,
                        d.source, Jsonb(dict(d.payload)), d.created_at, d.status.value,
                        d.attempts, d.last_status_code, d.next_attempt_at))
                    added += 1 if await cur.fetchone() is not None else 0
            return added

        return await self._run(work)

    async def claim_due(self, now: datetime, *, limit: int, lease: timedelta,
                        exclude: Iterable[str] = ()) -> list[Delivery]:
        """Lease due pending deliveries; other processes skip the rows this one locked."""
        rows = await self._fetch(
            # The oldest due delivery of each endpoint only: an endpoint gets its deliveries
            # in order, and one busy endpoint cannot fill a batch.
            "WITH cand AS (SELECT delivery_id, seq FROM (SELECT delivery_id, seq, row_number()"
            " OVER (PARTITION BY webhook_id ORDER BY seq) AS n"
            " FROM {s}.dvt_webhook_deliveries WHERE status = 'pending'"
            " AND NOT (webhook_id = ANY(%(skip)s))) x WHERE n = 1),"
            " c AS (SELECT d.delivery_id FROM {s}.dvt_webhook_deliveries d JOIN cand"
            " ON cand.delivery_id = d.delivery_id"
            " WHERE coalesce(d.next_attempt_at, d.created_at) <= %(now)s"
            " AND (d.leased_until IS NULL OR d.leased_until <= %(now)s)"
            " ORDER BY cand.seq LIMIT %(limit)s FOR UPDATE OF d SKIP LOCKED)"
            " UPDATE {s}.dvt_webhook_deliveries d SET leased_until = %(until)s FROM c"
            " WHERE d.delivery_id = c.delivery_id RETURNING "
            + ", ".join(f"d.{c.strip()}" for c in _DELIVERY_COLUMNS.split(",")),
            {"now": now, "skip": list(exclude), "limit": limit, "until": now + lease})
        return [_delivery(r) for r in rows]

    async def record_attempt(self, delivery: Delivery) -> None:
        """Store a delivery's outcome and end its lease."""
        await self._fetch(
            "UPDATE {s}.dvt_webhook_deliveries SET status = %s, attempts = %s,"
            " last_status_code = %s, next_attempt_at = %s, leased_until = NULL"
            " WHERE delivery_id = %s",
            (delivery.status.value, delivery.attempts, delivery.last_status_code,
             delivery.next_attempt_at, delivery.delivery_id))

    async def get_delivery(self, tenant_id: str, webhook_id: str,
                           delivery_id: str) -> Delivery | None:
        """One delivery of a tenant's webhook, or None."""
        rows = await self._fetch(f"SELECT {_DELIVERY_COLUMNS} FROM {{s}}.dvt_webhook_deliveries"
                                 " WHERE tenant_id = %s AND webhook_id = %s"
                                 " AND delivery_id = %s", (tenant_id, webhook_id, delivery_id))
        return _delivery(rows[0]) if rows else None

    async def list_deliveries(self, tenant_id: str, webhook_id: str, *, limit: int,
                              after: str | None) -> list[Delivery]:
        """A page of a webhook's deliveries, newest first."""
        rows = await self._fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM {{s}}.dvt_webhook_deliveries"
            " WHERE tenant_id = %(t)s AND webhook_id = %(w)s AND (%(after)s::text IS NULL OR"
            " seq < (SELECT seq FROM {s}.dvt_webhook_deliveries WHERE delivery_id = %(after)s"
            " AND webhook_id = %(w)s)) ORDER BY seq DESC LIMIT %(limit)s",
            {"t": tenant_id, "w": webhook_id, "after": after, "limit": limit})
        return [_delivery(r) for r in rows]

    async def next_due(self) -> datetime | None:
        """When the earliest pending delivery is due (its lease end when leased)."""
        rows = await self._fetch(
            "SELECT min(greatest(coalesce(next_attempt_at, created_at),"
            " coalesce(leased_until, created_at))) FROM {s}.dvt_webhook_deliveries"
            " WHERE status = 'pending'", ())
        return _utc(rows[0][0]) if rows else None
