"""Webhook rules without a server: the schedule, the URL rule, disabling a failing endpoint."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from dvt_api.settings import ApiSettings
from dvt_api.webhook_dispatch import Dispatcher, sign
from dvt_engine.eventlog import utc_now
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_webhooks import MemoryWebhookStore
from dvt_engine.webhooks import (
    DEFAULT_RETRY_SCHEDULE,
    Delivery,
    DeliveryStatus,
    Webhook,
    after_failure,
    mint_secret,
    url_problem,
)


def test_the_default_schedule_spans_at_least_three_days() -> None:
    assert sum(DEFAULT_RETRY_SCHEDULE, timedelta()) >= timedelta(days=3)
    delivery = _delivery()
    now = utc_now()
    for _ in DEFAULT_RETRY_SCHEDULE:
        delivery = after_failure(delivery, 500, now, DEFAULT_RETRY_SCHEDULE)
        assert delivery.status is DeliveryStatus.PENDING
    assert after_failure(delivery, 500, now, DEFAULT_RETRY_SCHEDULE).status is \
        DeliveryStatus.FAILED


def test_retry_after_stretches_but_never_shortens_the_delay() -> None:
    now = utc_now()
    later = after_failure(_delivery(), 429, now, (timedelta(seconds=1),),
                          retry_after=timedelta(seconds=60))
    assert later.next_attempt_at == now + timedelta(seconds=60)
    sooner = after_failure(_delivery(), 429, now, (timedelta(hours=1),),
                           retry_after=timedelta(seconds=1))
    assert sooner.next_attempt_at is not None
    assert sooner.next_attempt_at - now >= timedelta(minutes=48)  # 1 h minus 20 % jitter


@pytest.mark.parametrize(("url", "allowed", "refused"), [
    ("https://example.com/hook", (), False),
    ("http://127.0.0.1:8000/x", (), True),
    ("http://127.0.0.1:8000/x", ("127.0.0.1",), False),
    ("http://[::1]/x", ("127.0.0.1",), True),
    ("http://192.168.1.1/", (), True),
    ("http://169.254.169.254/latest", (), True),
    ("file:///etc/passwd", (), True),
    ("https://u:p@example.com/", (), True),
    ("https://example.com:99999/", (), True),
])
def test_url_rule(url: str, allowed: tuple[str, ...], refused: bool) -> None:
    assert (url_problem(url, allowed) is not None) is refused


def test_both_signatures_during_a_rotation() -> None:
    old, new = mint_secret(), mint_secret()
    header = sign("msg_1", utc_now(), "{}", (new, old))
    assert len(header.split(" ")) == 2
    assert all(part.startswith("v1,") for part in header.split(" "))


async def test_an_endpoint_failing_too_long_is_disabled_and_a_success_clears_it() -> None:
    hooks = MemoryWebhookStore()
    settings = ApiSettings(dev=True, webhook_disable_after=timedelta(days=5))
    dispatcher = Dispatcher(MemoryRunStateStore(), hooks, settings)
    try:
        hook = _hook()
        await hooks.create_webhook(hook)
        await hooks.add_deliveries([_delivery()])
        await dispatcher.settle(hook, _delivery(), 500, None)
        hook = await _get(hooks, hook)
        assert hook.failing_since is not None
        assert hook.active
        await dispatcher.settle(hook, _delivery(), 200, None)
        hook = await _get(hooks, hook)
        assert hook.failing_since is None
        long_ago = replace(hook, failing_since=utc_now() - timedelta(days=6))
        await dispatcher.settle(long_ago, _delivery(), None, None)
        hook = await _get(hooks, hook)
        assert not hook.active
        assert hook.disabled_reason is not None
        assert "failed since" in hook.disabled_reason
    finally:
        await dispatcher.stop()


async def _get(hooks: MemoryWebhookStore, hook: Webhook) -> Webhook:
    found = await hooks.get_webhook(hook.tenant_id, hook.webhook_id)
    assert found is not None
    return found


def _hook() -> Webhook:
    return Webhook(webhook_id="wh_1", tenant_id="t", url="https://example.com/h",
                   events=("run.completed",), secrets=(mint_secret(),), created_at=utc_now())


def _delivery() -> Delivery:
    return Delivery(delivery_id="msg_1", webhook_id="wh_1", tenant_id="t",
                    event_type="run.completed", run_id="r", source="t/r/1", payload={},
                    created_at=utc_now())


async def test_the_address_is_checked_again_before_each_attempt() -> None:
    """A stored URL whose host resolves to loopback is refused at send time: no request."""
    from webhook_receiver import Receiver

    receiver = Receiver()
    hooks = MemoryWebhookStore()
    settings = ApiSettings(dev=True, webhook_retry_schedule=(timedelta(hours=1),))
    dispatcher = Dispatcher(MemoryRunStateStore(), hooks, settings)
    try:
        url = receiver.url("/x").replace("127.0.0.1", "localhost")
        hook = replace(_hook(), url=url)
        await hooks.create_webhook(hook)  # stored directly: the creation check is not the point
        await hooks.add_deliveries([replace(_delivery(), next_attempt_at=utc_now())])
        dispatcher.start()
        deadline = asyncio.get_running_loop().time() + 10
        while (found := await hooks.get_delivery("t", "wh_1", "msg_1")) is not None \
                and found.attempts == 0:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)  # polling the store with a deadline
        assert found is not None
        assert found.status is DeliveryStatus.PENDING
        assert found.last_status_code is None
        assert receiver.received == []
    finally:
        await dispatcher.stop()
        receiver.close()
