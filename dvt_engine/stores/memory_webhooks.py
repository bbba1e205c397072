"""The webhook port in memory (dev service and unit tests); lost when the process ends.

Also the memory store's outbox, the twin of the PostgreSQL one: the dispatcher of a
``dvt serve --dev`` process leases the store's events from it and acknowledges them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from dvt_engine.models.events import Event
from dvt_engine.webhooks import Delivery, DeliveryStatus, Webhook, WebhookStore


@dataclass(frozen=True)
class OutboxItem:
    """One outbox event leased to a consumer (``id`` is its place in the store's log)."""

    id: int
    event: Event


class MemoryOutbox:
    """Every event of a memory store's log, leased to one consumer and acknowledged once.

    It reads the store's own commit-ordered log (a list that only grows), so it keeps no copy:
    only the acknowledged prefix, the acknowledgements above it and the leases.
    """

    def __init__(self, log: list[Event]) -> None:
        self._log = log
        self._floor = 0  # every event before this index is acknowledged
        self._acked: set[int] = set()
        self._leased_until: dict[int, float] = {}
        #: Set on every append; the consumer clears it before it claims.
        self.ready = asyncio.Event()

    def appended(self) -> None:
        """The store appended events: wake the consumer."""
        self.ready.set()

    def claim(self, limit: int, lease_seconds: float) -> list[OutboxItem]:
        """Lease up to ``limit`` unacknowledged events whose lease is free, oldest first."""
        now = time.monotonic()
        items: list[OutboxItem] = []
        for index in range(self._floor, len(self._log)):
            if len(items) >= limit:
                break
            item_id = index + 1
            if item_id in self._acked or self._leased_until.get(item_id, now) > now:
                continue
            self._leased_until[item_id] = now + lease_seconds
            items.append(OutboxItem(item_id, self._log[index]))
        return items

    def ack(self, ids: Iterable[int]) -> None:
        """Acknowledge leased events; they are never handed out again."""
        for item_id in ids:
            self._leased_until.pop(item_id, None)
            if item_id > self._floor:
                self._acked.add(item_id)
        while self._floor + 1 in self._acked:
            self._floor += 1
            self._acked.discard(self._floor)


class MemoryWebhookStore(WebhookStore):
    """Subscriptions and deliveries in dicts, in insertion order."""

    def __init__(self) -> None:
        self._hooks: dict[str, Webhook] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._sources: set[tuple[str, str]] = set()
        self._leased_until: dict[str, datetime] = {}

    async def create_webhook(self, webhook: Webhook) -> None:
        """Store a new subscription."""
        self._hooks[webhook.webhook_id] = webhook

    async def get_webhook(self, tenant_id: str, webhook_id: str) -> Webhook | None:
        """A subscription of this tenant, or None."""
        hook = self._hooks.get(webhook_id)
        return hook if hook is not None and hook.tenant_id == tenant_id else None

    async def list_webhooks(self, tenant_id: str) -> list[Webhook]:
        """Every subscription of a tenant, oldest first."""
        return [h for h in self._hooks.values() if h.tenant_id == tenant_id]

    async def delete_webhook(self, tenant_id: str, webhook_id: str) -> bool:
        """Delete a subscription and its deliveries."""
        if await self.get_webhook(tenant_id, webhook_id) is None:
            return False
        del self._hooks[webhook_id]
        for key in [k for k, d in self._deliveries.items() if d.webhook_id == webhook_id]:
            del self._deliveries[key]
        self._sources = {s for s in self._sources if s[0] != webhook_id}
        return True

    async def update_webhook(self, webhook: Webhook) -> None:
        """Store a subscription's new state (when it still exists)."""
        if webhook.webhook_id in self._hooks:
            self._hooks[webhook.webhook_id] = webhook

    async def subscribers(self, tenant_id: str, webhook_event: str) -> list[Webhook]:
        """Active subscriptions of a tenant wanting ``webhook_event``."""
        return [h for h in self._hooks.values()
                if h.tenant_id == tenant_id and h.active and h.wants(webhook_event)]

    async def add_deliveries(self, deliveries: Sequence[Delivery]) -> int:
        """Store new deliveries, once per (webhook, source)."""
        added = 0
        for delivery in deliveries:
            key = (delivery.webhook_id, delivery.source)
            if key not in self._sources and delivery.webhook_id in self._hooks:
                self._sources.add(key)
                self._deliveries[delivery.delivery_id] = delivery
                added += 1
        return added

    async def claim_due(self, now: datetime, *, limit: int, lease: timedelta,
                        exclude: Iterable[str] = ()) -> list[Delivery]:
        """Lease due pending deliveries, oldest first."""
        skip = set(exclude)
        found: list[Delivery] = []
        for delivery in self._deliveries.values():
            if len(found) >= limit:
                break
            if delivery.status is not DeliveryStatus.PENDING or delivery.webhook_id in skip:
                continue
            skip.add(delivery.webhook_id)  # the oldest pending one of each endpoint only
            if ((delivery.next_attempt_at or now) <= now
                    and self._leased_until.get(delivery.delivery_id, now) <= now):
                self._leased_until[delivery.delivery_id] = now + lease
                found.append(delivery)
        return found

    async def record_attempt(self, delivery: Delivery) -> None:
        """Store a delivery's outcome and end its lease."""
        if delivery.delivery_id in self._deliveries:
            self._deliveries[delivery.delivery_id] = delivery
            self._leased_until.pop(delivery.delivery_id, None)

    async def get_delivery(self, tenant_id: str, webhook_id: str,
                           delivery_id: str) -> Delivery | None:
        """One delivery of a tenant's webhook, or None."""
        found = self._deliveries.get(delivery_id)
        if found is None or found.tenant_id != tenant_id or found.webhook_id != webhook_id:
            return None
        return replace(found)

    async def list_deliveries(self, tenant_id: str, webhook_id: str, *, limit: int,
                              after: str | None) -> list[Delivery]:
        """A page of a webhook's deliveries, newest first."""
        mine = [d for d in reversed(self._deliveries.values())
                if d.tenant_id == tenant_id and d.webhook_id == webhook_id]
        if after is not None:
            ids = [d.delivery_id for d in mine]
            mine = mine[ids.index(after) + 1:] if after in ids else []
        return mine[:limit]

    async def next_due(self) -> datetime | None:
        """When the earliest pending delivery is due."""
        due = [d.next_attempt_at for d in self._deliveries.values()
               if d.status is DeliveryStatus.PENDING and d.next_attempt_at is not None]
        return min(due, default=None)
