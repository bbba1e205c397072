"""Webhook subscriptions of the caller's tenant and their deliveries (admin)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Path, Query
from starlette.responses import Response

from dvt_api.auth import Principal, role, services
from dvt_api.problems import ApiProblem, HttpCode
from dvt_api.services import Services
from dvt_api.webhook_schemas import (
    Accepted,
    DeliveryInfo,
    DeliveryList,
    WebhookCreate,
    WebhookCreated,
    WebhookInfo,
    WebhookList,
)
from dvt_engine.access import ApiRole
from dvt_engine.eventlog import utc_now
from dvt_engine.webhooks import (
    Delivery,
    DeliveryStatus,
    Webhook,
    WebhookStore,
    address_problems,
    mint_secret,
    mint_webhook_id,
    url_problem,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
ADMIN = role(ApiRole.ADMIN)


def hooks_of(svc: Services) -> WebhookStore:
    """The webhook store (every service has one)."""
    assert svc.webhooks is not None
    return svc.webhooks


def not_found() -> ApiProblem:
    """The one answer for a webhook the tenant cannot see (missing, or another tenant's)."""
    return ApiProblem(404, HttpCode.WEBHOOK_NOT_FOUND, "webhook not found")


def webhook_info(hook: Webhook) -> WebhookInfo:
    """A subscription as listed."""
    return WebhookInfo(webhook_id=hook.webhook_id, url=hook.url, events=list(hook.events),
                       description=hook.description, created_at=hook.created_at,
                       disabled_at=hook.disabled_at, disabled_reason=hook.disabled_reason,
                       failing_since=hook.failing_since)


def delivery_info(d: Delivery) -> DeliveryInfo:
    """A delivery as listed."""
    return DeliveryInfo(delivery_id=d.delivery_id, event_type=d.event_type, run_id=d.run_id,
                        status=d.status.value, attempts=d.attempts,
                        last_status_code=d.last_status_code, next_attempt_at=d.next_attempt_at,
                        created_at=d.created_at)


async def check_url(url: str, allowed: tuple[str, ...]) -> None:
    """422 WEBHOOK_URL_NOT_ALLOWED unless ``url`` is a public http(s) address or allowlisted."""
    problem = url_problem(url, allowed)
    host = urlsplit(url).hostname or ""
    if problem is None and host not in allowed:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
            problem = address_problems(str(i[4][0]) for i in infos)
        except OSError:
            problem = "the host does not resolve"
    if problem is not None:
        raise ApiProblem(422, HttpCode.WEBHOOK_URL_NOT_ALLOWED,
                         f"the webhook URL is not allowed: {problem}",
                         errors=[{"path": "body/url", "message": problem}])


async def _hook(svc: Services, tenant_id: str, webhook_id: str) -> Webhook:
    hook = await hooks_of(svc).get_webhook(tenant_id, webhook_id)
    if hook is None:
        raise not_found()
    return hook


@router.post("", status_code=201, response_model=WebhookCreated,
             summary="Subscribe an endpoint to events")
async def create(body: WebhookCreate, who: Principal = ADMIN,
                 svc: Services = Depends(services)) -> WebhookCreated:
    """A new subscription; its signing secret is in this answer only."""
    await check_url(body.url, svc.settings.webhook_allowed_hosts)
    hook = Webhook(webhook_id=mint_webhook_id(), tenant_id=who.tenant_id, url=body.url,
                   events=tuple(dict.fromkeys(body.events)), secrets=(mint_secret(),),
                   created_at=utc_now(), description=body.description)
    await hooks_of(svc).create_webhook(hook)
    return WebhookCreated(secret=hook.secrets[0], **webhook_info(hook).model_dump())


@router.get("", response_model=WebhookList, summary="List the tenant's webhooks")
async def list_hooks(who: Principal = ADMIN, svc: Services = Depends(services)) -> WebhookList:
    """Every subscription of the caller's tenant, oldest first."""
    hooks = await hooks_of(svc).list_webhooks(who.tenant_id)
    return WebhookList(items=[webhook_info(h) for h in hooks])


@router.get("/{webhookId}", response_model=WebhookInfo, summary="One webhook")
async def get_hook(webhook_id: str = Path(alias="webhookId", max_length=200),
                   who: Principal = ADMIN,
                   svc: Services = Depends(services)) -> WebhookInfo:
    """A subscription of the caller's tenant (disabled ones say why)."""
    return webhook_info(await _hook(svc, who.tenant_id, webhook_id))


@router.delete("/{webhookId}", status_code=204, response_class=Response,
               summary="Delete a webhook")
async def delete(webhook_id: str = Path(alias="webhookId", max_length=200), who: Principal = ADMIN,
                 svc: Services = Depends(services)) -> Response:
    """Delete a subscription and its deliveries; nothing more is sent to it."""
    if not await hooks_of(svc).delete_webhook(who.tenant_id, webhook_id):
        raise not_found()
    return Response(status_code=204)


@router.post("/{webhookId}/rotate-secret", response_model=WebhookCreated,
             summary="Rotate a webhook's signing secret")
async def rotate(webhook_id: str = Path(alias="webhookId", max_length=200), who: Principal = ADMIN,
                 svc: Services = Depends(services)) -> WebhookCreated:
    """A new secret (shown once); until the next rotation deliveries carry a signature with
    the new and one with the previous secret, so receivers can switch without a gap."""
    hook = await _hook(svc, who.tenant_id, webhook_id)
    rotated = replace(hook, secrets=(mint_secret(), hook.secrets[0]))
    await hooks_of(svc).update_webhook(rotated)
    return WebhookCreated(secret=rotated.secrets[0], **webhook_info(rotated).model_dump())


@router.get("/{webhookId}/deliveries", response_model=DeliveryList,
            summary="A webhook's deliveries")
async def deliveries(webhook_id: str = Path(alias="webhookId", max_length=200),
                     limit: int = Query(default=50, ge=1, le=200),
                     cursor: str | None = Query(default=None, max_length=200),
                     who: Principal = ADMIN,
                     svc: Services = Depends(services)) -> DeliveryList:
    """Deliveries of a subscription, newest first; pass ``nextCursor`` back for more."""
    await _hook(svc, who.tenant_id, webhook_id)
    page = await hooks_of(svc).list_deliveries(who.tenant_id, webhook_id, limit=limit + 1,
                                               after=cursor)
    more = len(page) > limit
    page = page[:limit]
    return DeliveryList(items=[delivery_info(d) for d in page],
                        next_cursor=page[-1].delivery_id if more and page else None)


@router.post("/{webhookId}/deliveries/{deliveryId}/redeliver", status_code=202,
             response_model=Accepted, summary="Send a delivery again")
async def redeliver(webhook_id: str = Path(alias="webhookId", max_length=200),
                    delivery_id: str = Path(alias="deliveryId", max_length=200),
                    who: Principal = ADMIN,
                    svc: Services = Depends(services)) -> Accepted:
    """Queue a delivery again now, with a fresh retry schedule and the same ``webhook-id``."""
    hook = await _hook(svc, who.tenant_id, webhook_id)
    found = await hooks_of(svc).get_delivery(who.tenant_id, webhook_id, delivery_id)
    if found is None:
        raise ApiProblem(404, HttpCode.DELIVERY_NOT_FOUND, "delivery not found")
    if not hook.active:
        raise ApiProblem(409, HttpCode.WEBHOOK_DISABLED,
                         "the webhook is disabled; create a new one for this endpoint")
    await hooks_of(svc).record_attempt(replace(found, status=DeliveryStatus.PENDING, attempts=0,
                                               next_attempt_at=utc_now()))
    if svc.dispatcher is not None:
        svc.dispatcher.poke()
    return Accepted(delivery_id=delivery_id)
