"""Request and response bodies of the webhook routes (API.md §7)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from dvt_api.schemas import Body, Out

WebhookEvent = Literal["run.completed", "run.failed", "run.cancelled", "run.paused",
                       "step.failed", "approval.requested", "budget.threshold"]


class WebhookCreate(Body):
    """``POST /v1/webhooks``: where to send which events."""

    url: str = Field(min_length=1, max_length=2000)
    events: list[WebhookEvent] = Field(min_length=1, max_length=20)
    description: str | None = Field(default=None, max_length=500)


class WebhookInfo(Out):
    """A subscription as listed (never its secret)."""

    webhook_id: str
    url: str
    events: list[str]
    description: str | None = None
    created_at: datetime
    #: Set when the service stopped sending (410 Gone, or failing for days), with why.
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    #: When the current run of failed attempts began (None while the endpoint succeeds).
    failing_since: datetime | None = None


class WebhookCreated(WebhookInfo):
    """The answer to creating a subscription or rotating its secret: the secret, shown once."""

    secret: str


class WebhookList(Out):
    """The tenant's subscriptions, oldest first."""

    items: list[WebhookInfo]


class DeliveryInfo(Out):
    """One delivery of an event to a subscription."""

    delivery_id: str
    event_type: str
    run_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None = None
    next_attempt_at: datetime | None = None
    created_at: datetime


class DeliveryList(Out):
    """A page of deliveries, newest first."""

    items: list[DeliveryInfo]
    next_cursor: str | None = None


class Accepted(Out):
    """A redelivery was queued."""

    delivery_id: str
    status: Literal["pending"] = "pending"
