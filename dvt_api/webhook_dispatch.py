"""The webhook dispatcher: outbox events become deliveries, deliveries are signed and sent.

Two background tasks of the service. *Intake* leases committed events from the store's outbox
(``FOR UPDATE SKIP LOCKED``: several ``dvt serve`` processes share it), creates one delivery per
matching subscription (unique per webhook and event, so a crash before the outbox
acknowledgement creates nothing twice) and acknowledges the events. It sleeps on the store's
LISTEN/NOTIFY channel, so an idle service sends no queries but a slow safety poll. *Sending*
leases due deliveries and posts each in its own task under a per-endpoint limit, with a hard
timeout: a hanging receiver holds only its own endpoint's slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import standardwebhooks

from dvt_api.metrics import ApiMetrics
from dvt_api.settings import ApiSettings
from dvt_engine.eventlog import utc_now
from dvt_engine.models.events import Event
from dvt_engine.ports import RunStateStore
from dvt_engine.webhooks import (
    EVENT_TYPES,
    Delivery,
    DeliveryStatus,
    Webhook,
    WebhookStore,
    address_problems,
    after_failure,
    mint_delivery_id,
    url_problem,
)

log = logging.getLogger("dvt_api.webhooks")
#: Without notifications (listener down, or a store without them) the outbox is read this often.
SAFETY_POLL_S = 30.0
OUTBOX_BATCH = 100
SEND_BATCH = 50


def run_summary(event: Event, snapshot: Any) -> dict[str, Any]:
    """The ``data`` of a webhook body: a run summary and the event that triggered it."""
    run: dict[str, Any] = {"runId": event.run_id, "planId": event.plan_id,
                           "planVersion": event.plan_version}
    if snapshot is not None:
        run.update(status=str(snapshot.status), lastEventSeq=snapshot.last_event_seq,
                   projectId=snapshot.project_id, environmentId=snapshot.environment_id)
    return {"run": run, "event": event.model_dump(mode="json", by_alias=True)}


def sign(delivery_id: str, when: datetime, body: str, secrets: tuple[str, ...]) -> str:
    """The ``webhook-signature`` header: one ``v1,<sig>`` per secret, space-separated."""
    return " ".join(standardwebhooks.Webhook(s).sign(delivery_id, when, body) for s in secrets)


def retry_after_of(response: httpx.Response, now: datetime) -> timedelta | None:
    """The delay a 429/503 asks for (seconds or an HTTP date), or None."""
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return timedelta(seconds=int(value))
    with contextlib.suppress(TypeError, ValueError):
        when: datetime = email.utils.parsedate_to_datetime(value)
        return max(timedelta(0), when.astimezone(UTC) - now)
    return None


class Dispatcher:
    """Intake and sending for one service process; ``start()`` then ``stop()``."""

    def __init__(self, store: RunStateStore, hooks: WebhookStore, settings: ApiSettings,
                 metrics: ApiMetrics | None = None, *,
                 on_events: Callable[[list[Event]], Awaitable[None]] | None = None) -> None:
        self._store = store
        # Told of every outbox event once it is acknowledged (the run metrics and run logs).
        self._on_events = on_events
        self._metrics = metrics or ApiMetrics()
        self._hooks = hooks
        self._settings = settings
        self._wake_sender = asyncio.Event()
        self._inflight: Counter[str] = Counter()
        self._sends: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                         limits=httpx.Limits(max_connections=200))
        self._notifier: Any = None

    def start(self) -> None:
        """Start intake (when the store has an outbox: PostgreSQL's, or memory's) and sending."""
        if hasattr(self._store, "claim_outbox"):
            self._tasks.append(asyncio.create_task(self._intake(), name="dvt-webhook-intake"))
        self._tasks.append(asyncio.create_task(self._sender(), name="dvt-webhook-sender"))

    def poke(self) -> None:
        """A delivery became due (e.g. redelivered): look now."""
        self._wake_sender.set()

    async def stop(self) -> None:
        """Stop both loops and abandon sends in flight (their leases expire, others resend)."""
        for task in [*self._tasks, *self._sends]:
            task.cancel()
        for task in [*self._tasks, *self._sends]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._notifier is not None:
            await self._notifier.close()
        await self._client.aclose()

    # --- intake ------------------------------------------------------------------------
    async def _intake(self) -> None:
        ready = getattr(self._store, "outbox_ready", None)
        if isinstance(ready, asyncio.Event):  # the memory store wakes its one consumer itself
            await self._intake_loop(ready)
            return
        from dvt_statestore_pg.notify import Notifier, channel_for

        config = self._store.config  # type: ignore[attr-defined]
        self._notifier = Notifier(config.conninfo, channel_for(config.schema))
        with self._notifier.subscribe(None, None) as waiter:
            await self._intake_loop(waiter.event)

    async def _intake_loop(self, wake: asyncio.Event) -> None:
        while True:
            wake.clear()
            try:
                moved = await self._intake_once()
            except Exception as exc:  # the next round retries; the outbox keeps the rows
                log.warning("webhook intake failed", extra={"code": type(exc).__name__})
                moved = 0
            if moved:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAFETY_POLL_S):
                    await wake.wait()

    async def _intake_once(self) -> int:
        items = await self._store.claim_outbox(limit=OUTBOX_BATCH)  # type: ignore[attr-defined]
        if not items:
            return 0
        added, done = 0, []
        for item in items:
            try:
                added += await self._deliveries_for(item.event)
            except Exception as exc:  # left leased: retried when its lease ends, not blocking
                log.warning("webhook intake of an event failed",
                            extra={"code": type(exc).__name__, "run_id": item.event.run_id})
                continue
            done.append(item.id)
        if done:
            await self._store.ack_outbox(done)  # type: ignore[attr-defined]
            if self._on_events is not None:
                acked = set(done)
                await self._on_events([i.event for i in items if i.id in acked])
        if added:
            self._wake_sender.set()
        return len(items)

    async def _deliveries_for(self, event: Event) -> int:
        webhook_event = EVENT_TYPES.get(event.event_type)
        if webhook_event is None:
            return 0
        hooks = await self._hooks.subscribers(event.tenant_id, webhook_event)
        if not hooks:
            return 0
        snapshot = await self._store.get_snapshot(event.tenant_id, event.run_id)
        when = event.persisted_at or utc_now()
        payload = {"type": webhook_event, "timestamp": when.isoformat(),
                   "data": run_summary(event, snapshot)}
        source = f"{event.tenant_id}/{event.run_id}/{event.run_seq}"
        now = utc_now()
        return await self._hooks.add_deliveries([
            Delivery(delivery_id=mint_delivery_id(), webhook_id=h.webhook_id,
                     tenant_id=h.tenant_id, event_type=webhook_event, run_id=event.run_id,
                     source=source, payload=payload, created_at=now, next_attempt_at=now)
            for h in hooks])

    # --- sending -----------------------------------------------------------------------
    async def _sender(self) -> None:
        settings = self._settings
        # Longer than any attempt can take (the POST is cut at the timeout): a delivery leased
        # by a process that died is sent again once this has passed.
        lease = timedelta(seconds=2 * settings.webhook_timeout_s + 5)
        while True:
            self._wake_sender.clear()
            try:
                busy = [w for w, n in self._inflight.items()
                        if n >= settings.webhook_endpoint_concurrency]
                due = await self._hooks.claim_due(utc_now(), limit=SEND_BATCH, lease=lease,
                                                  exclude=busy)
                for delivery in due:
                    self._inflight[delivery.webhook_id] += 1
                    task = asyncio.create_task(self._send(delivery))
                    self._sends.add(task)
                    task.add_done_callback(self._sent(delivery.webhook_id))
                if due:
                    continue
                next_due = await self._hooks.next_due()
            except Exception as exc:  # the next round retries
                log.warning("webhook sending failed", extra={"code": type(exc).__name__})
                next_due = None
            wait = SAFETY_POLL_S
            if next_due is not None:
                # Due but not claimable (busy endpoint, another process's lease): look again soon.
                wait = min(SAFETY_POLL_S, max(0.5, (next_due - utc_now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake_sender.wait()

    def _sent(self, webhook_id: str) -> Any:
        def done(task: asyncio.Task[None]) -> None:
            self._sends.discard(task)
            self._inflight[webhook_id] -= 1
            if self._inflight[webhook_id] <= 0:
                del self._inflight[webhook_id]
            self._wake_sender.set()

        return done

    async def _send(self, delivery: Delivery) -> None:
        hook = await self._hooks.get_webhook(delivery.tenant_id, delivery.webhook_id)
        if hook is None:
            return
        now = utc_now()
        if not hook.active:
            await self._hooks.record_attempt(replace(delivery, status=DeliveryStatus.FAILED,
                                                     next_attempt_at=None))
            return
        code: int | None = None
        retry_after: timedelta | None = None
        refused = await self._refusal(hook.url)
        if refused is None:
            body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
            headers = {"content-type": "application/json", "user-agent": "dvt-webhooks",
                       "webhook-id": delivery.delivery_id,
                       "webhook-timestamp": str(int(now.timestamp())),
                       "webhook-signature": sign(delivery.delivery_id, now, body, hook.secrets)}
            try:
                async with asyncio.timeout(self._settings.webhook_timeout_s):
                    response = await self._client.post(hook.url, content=body.encode(),
                                                       headers=headers)
                code = response.status_code
                retry_after = retry_after_of(response, utc_now())
            except (TimeoutError, httpx.HTTPError):
                code = None
        else:
            self._metrics.webhook_attempts.labels("refused").inc()
            log.warning("webhook target refused", extra={"webhook_id": hook.webhook_id,
                                                          "reason": refused})
        await self.settle(hook, delivery, code, retry_after)

    async def _refusal(self, url: str) -> str | None:
        allowed = self._settings.webhook_allowed_hosts
        problem = url_problem(url, allowed)
        host = urlsplit(url).hostname or ""
        if problem is not None or host in allowed:
            return problem
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
        except OSError:
            return "the host does not resolve"
        return address_problems(str(i[4][0]) for i in infos)

    async def settle(self, hook: Webhook, delivery: Delivery, code: int | None,
                      retry_after: timedelta | None) -> None:
        """Record an attempt's outcome (``code`` None: no answer) and judge the endpoint."""
        now = utc_now()
        settings = self._settings
        if code is not None and 200 <= code < 300:
            self._metrics.webhook_attempts.labels("delivered").inc()
            await self._hooks.record_attempt(replace(
                delivery, status=DeliveryStatus.DELIVERED, attempts=delivery.attempts + 1,
                last_status_code=code, next_attempt_at=None))
            if hook.failing_since is not None:
                await self._hooks.update_webhook(replace(hook, failing_since=None))
            return
        if code == 410:
            self._metrics.webhook_attempts.labels("failed").inc()
            await self._hooks.record_attempt(replace(
                delivery, status=DeliveryStatus.FAILED, attempts=delivery.attempts + 1,
                last_status_code=code, next_attempt_at=None))
            await self._disable(hook, "the endpoint answered 410 Gone", now)
            return
        settled = after_failure(delivery, code, now, settings.webhook_retry_schedule,
                                retry_after=retry_after)
        await self._hooks.record_attempt(settled)
        if settled.status is DeliveryStatus.FAILED:
            self._metrics.webhook_attempts.labels("failed").inc()
        else:
            self._metrics.webhook_attempts.labels("retry").inc()
        if hook.failing_since is None:
            await self._hooks.update_webhook(replace(hook, failing_since=now))
        elif now - hook.failing_since >= settings.webhook_disable_after:
            await self._disable(hook, "the endpoint has failed since "
                                      f"{hook.failing_since.isoformat()}", now)

    async def _disable(self, hook: Webhook, reason: str, now: datetime) -> None:
        await self._hooks.update_webhook(replace(hook, disabled_at=now, disabled_reason=reason))
        self._metrics.webhooks_disabled.inc()
        log.warning("webhook disabled", extra={"webhook_id": hook.webhook_id,
                                               "tenant_id": hook.tenant_id, "reason": reason})
