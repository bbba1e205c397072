"""Webhooks: subscriptions, deliveries and their rules, as one port beside the run store.

A subscription (``Webhook``) names a tenant's HTTPS endpoint and the event types it wants; a
``Delivery`` is one event bound for one subscription, retried until the endpoint answers 2xx or
the retry schedule runs out. The HTTP service creates deliveries from the store's outbox and
sends them; this module holds what both store implementations and the sender share: the event
mapping, the retry schedule, the secret format and the address rule for target URLs.

A secret is an HMAC key (Standard Webhooks): the service must be able to sign with it, so it is
stored as is (not hashed) and only ever leaves the service once, in the creation answer.
"""

from __future__ import annotations

import abc
import base64
import ipaddress
import random
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit

from dvt_engine.models.events import EventType
from dvt_engine.planning.uri_policy import address_problem

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
WEBHOOK_ID_PREFIX = "wh_"
DELIVERY_ID_PREFIX = "msg_"

#: Webhook event type of each store event type that is sent (docs/api.md §7 lists it).
EVENT_TYPES: Mapping[str, str] = {
    EventType.RUN_COMPLETED: "run.completed",
    EventType.RUN_FAILED: "run.failed",
    EventType.RUN_CANCELLED: "run.cancelled",
    EventType.RUN_PAUSED: "run.paused",
    EventType.STEP_FAILED: "step.failed",
    EventType.STEP_AWAITING_APPROVAL: "approval.requested",
}
#: Tenant-level notices that are no store event: a budget threshold crossed (docs/cost.md).
BUDGET_THRESHOLD = "budget.threshold"
WEBHOOK_EVENT_TYPES: tuple[str, ...] = (*EVENT_TYPES.values(), BUDGET_THRESHOLD)

#: Default delays before attempts 2, 3, ...: Standard Webhooks' schedule stretched to three
#: days (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, then every 12 h until day three).
DEFAULT_RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2),
    timedelta(hours=5), timedelta(hours=10), timedelta(hours=12), timedelta(hours=12),
    timedelta(hours=12), timedelta(hours=12), timedelta(hours=12),
)


class DeliveryStatus(StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Webhook:
    """A tenant's subscription. ``secrets`` holds the signing keys, newest first (two during
    a rotation); ``disabled_at``/``disabled_reason`` say why the service stopped sending."""

    webhook_id: str
    tenant_id: str
    url: str
    events: tuple[str, ...]
    secrets: tuple[str, ...]
    created_at: datetime
    description: str | None = None
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    #: When the endpoint's current run of failures began (None while it answers 2xx).
    failing_since: datetime | None = None

    @property
    def active(self) -> bool:
        """False once disabled."""
        return self.disabled_at is None

    def wants(self, webhook_event: str) -> bool:
        """Whether this subscription receives ``webhook_event``."""
        return webhook_event in self.events


@dataclass(frozen=True)
class Delivery:
    """One event bound for one webhook; ``delivery_id`` is the stable ``webhook-id`` header."""

    delivery_id: str
    webhook_id: str
    tenant_id: str
    event_type: str
    run_id: str
    #: The store event that triggered it (``tenant/run/seq``): deliveries are unique per
    #: (webhook, source), so re-reading the outbox after a crash creates none twice.
    source: str
    payload: Mapping[str, object]
    created_at: datetime
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    last_status_code: int | None = None
    next_attempt_at: datetime | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


class WebhookStore(abc.ABC):
    """Durable subscriptions and deliveries (memory and PostgreSQL implement it)."""

    @abc.abstractmethod
    async def create_webhook(self, webhook: Webhook) -> None:
        """Store a new subscription."""

    @abc.abstractmethod
    async def get_webhook(self, tenant_id: str, webhook_id: str) -> Webhook | None:
        """A subscription of this tenant, or None (also for another tenant's)."""

    @abc.abstractmethod
    async def list_webhooks(self, tenant_id: str) -> list[Webhook]:
        """Every subscription of a tenant, oldest first."""

    @abc.abstractmethod
    async def delete_webhook(self, tenant_id: str, webhook_id: str) -> bool:
        """Delete a subscription and its deliveries; False when the tenant has none such."""

    @abc.abstractmethod
    async def update_webhook(self, webhook: Webhook) -> None:
        """Store a subscription's changed secrets, failure start or disabled state."""

    @abc.abstractmethod
    async def subscribers(self, tenant_id: str, webhook_event: str) -> list[Webhook]:
        """The active subscriptions of a tenant that want ``webhook_event``."""

    @abc.abstractmethod
    async def add_deliveries(self, deliveries: Sequence[Delivery]) -> int:
        """Store new deliveries, skipping any whose (webhook, source) exists; how many new."""

    @abc.abstractmethod
    async def claim_due(self, now: datetime, *, limit: int, lease: timedelta,
                        exclude: Iterable[str] = ()) -> list[Delivery]:
        """Lease due deliveries: of each webhook (but the ``exclude`` ones) its oldest pending
        one when due at ``now``; a leased one is due again only after ``lease`` (a dead
        sender's work returns)."""

    @abc.abstractmethod
    async def record_attempt(self, delivery: Delivery) -> None:
        """Store a delivery's outcome: status, attempts, last code and next attempt."""

    @abc.abstractmethod
    async def get_delivery(self, tenant_id: str, webhook_id: str,
                           delivery_id: str) -> Delivery | None:
        """One delivery of a tenant's webhook, or None."""

    @abc.abstractmethod
    async def list_deliveries(self, tenant_id: str, webhook_id: str, *, limit: int,
                              after: str | None) -> list[Delivery]:
        """A page of a webhook's deliveries, newest first, after the ``after`` delivery id."""

    @abc.abstractmethod
    async def next_due(self) -> datetime | None:
        """When the earliest pending delivery is due (None when none is pending)."""


def mint_secret() -> str:
    """A new signing secret: ``whsec_`` + base64 of 32 random bytes (Standard Webhooks)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def mint_webhook_id() -> str:
    """A new subscription id."""
    return WEBHOOK_ID_PREFIX + secrets.token_hex(8)


def mint_delivery_id() -> str:
    """A new delivery id (sent as ``webhook-id``, the receiver's deduplication key)."""
    return DELIVERY_ID_PREFIX + secrets.token_hex(12)


def retry_delay(schedule: Sequence[timedelta], attempts: int, *,
                rng: random.Random | None = None) -> timedelta | None:
    """The delay after the ``attempts``-th failed attempt, with +-20 % jitter; None when the
    schedule is exhausted (the delivery fails)."""
    if attempts < 1 or attempts > len(schedule):
        return None
    base = schedule[attempts - 1].total_seconds()
    jitter = (rng or random).uniform(0.8, 1.2)
    return timedelta(seconds=base * jitter)


def after_failure(delivery: Delivery, code: int | None, now: datetime,
                  schedule: Sequence[timedelta], *,
                  retry_after: timedelta | None = None) -> Delivery:
    """The delivery after a failed attempt: pending with the next attempt, or failed."""
    attempts = delivery.attempts + 1
    delay = retry_delay(schedule, attempts)
    if delay is None:
        return replace(delivery, status=DeliveryStatus.FAILED, attempts=attempts,
                       last_status_code=code, next_attempt_at=None)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return replace(delivery, status=DeliveryStatus.PENDING, attempts=attempts,
                   last_status_code=code, next_attempt_at=now + delay)


def url_problem(url: str, allowed_hosts: Iterable[str] = ()) -> str | None:
    """Why ``url`` cannot be a webhook target, judged on its text (None when it can).

    Addresses of a hostname are judged by ``address_problems`` once resolved; a host in
    ``allowed_hosts`` (e.g. ``127.0.0.1`` for tests) skips the address rule.
    """
    if len(url) > 2000:
        return "the URL is too long"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "the URL is malformed"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "the URL needs an http or https scheme and a host"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not allowed"
    host = parts.hostname
    if host in set(allowed_hosts):
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    problem = address_problem(ip)
    return f"the host is a {problem} address" if problem else None


def address_problems(addresses: Iterable[str]) -> str | None:
    """Why a resolved host cannot be a target: one non-public address is enough."""
    for text in addresses:
        try:
            problem = address_problem(ipaddress.ip_address(text))
        except ValueError:
            return "the host resolves to an unreadable address"
        if problem is not None:
            return f"the host resolves to a {problem} address"
    return None
