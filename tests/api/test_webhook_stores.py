"""The webhook port: memory and PostgreSQL give the same answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

from dvt_engine.eventlog import utc_now
from dvt_engine.stores.memory_webhooks import MemoryWebhookStore
from dvt_engine.webhooks import (
    Delivery,
    DeliveryStatus,
    Webhook,
    WebhookStore,
    mint_delivery_id,
    mint_secret,
    mint_webhook_id,
)

LEASE = timedelta(seconds=30)


@pytest_asyncio.fixture(params=["memory", "postgresql"])
async def hooks(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryWebhookStore()
        return
    from dvt_statestore_pg.webhooks import PostgresWebhookStore

    store = await PostgresWebhookStore.open(request.getfixturevalue("dvt_postgres_store_url"))
    try:
        yield store
    finally:
        await store.close()


async def _hook(store: WebhookStore, tenant: str = "t1", **kw: Any) -> Webhook:
    hook = Webhook(webhook_id=mint_webhook_id(), tenant_id=tenant, url="https://example.com/h",
                   events=kw.pop("events", ("run.completed",)), secrets=(mint_secret(),),
                   created_at=utc_now(), **kw)
    await store.create_webhook(hook)
    return hook


def _delivery(hook: Webhook, source: str) -> Delivery:
    now = utc_now()
    return Delivery(delivery_id=mint_delivery_id(), webhook_id=hook.webhook_id,
                    tenant_id=hook.tenant_id, event_type="run.completed", run_id="r1",
                    source=source, payload={"type": "run.completed", "data": {"n": 1}},
                    created_at=now, next_attempt_at=now)


async def test_webhooks_are_per_tenant(hooks: WebhookStore) -> None:
    mine = await _hook(hooks, "t1", events=("run.failed", "step.failed"))
    await _hook(hooks, "t2")
    assert await hooks.get_webhook("t2", mine.webhook_id) is None
    found = await hooks.get_webhook("t1", mine.webhook_id)
    assert found == mine
    assert [h.webhook_id for h in await hooks.list_webhooks("t1")] == [mine.webhook_id]
    assert [h.webhook_id for h in await hooks.subscribers("t1", "step.failed")] == \
        [mine.webhook_id]
    assert await hooks.subscribers("t1", "run.completed") == []
    await hooks.update_webhook(replace(mine, disabled_at=utc_now(), disabled_reason="gone"))
    assert await hooks.subscribers("t1", "step.failed") == []
    assert not await hooks.delete_webhook("t2", mine.webhook_id)
    assert await hooks.delete_webhook("t1", mine.webhook_id)
    assert await hooks.get_webhook("t1", mine.webhook_id) is None


async def test_a_source_makes_one_delivery_per_webhook(hooks: WebhookStore) -> None:
    hook = await _hook(hooks)
    assert await hooks.add_deliveries([_delivery(hook, "t1/r1/5")]) == 1
    assert await hooks.add_deliveries([_delivery(hook, "t1/r1/5")]) == 0
    (stored,) = await hooks.list_deliveries("t1", hook.webhook_id, limit=10, after=None)
    assert stored.payload == {"type": "run.completed", "data": {"n": 1}}
    assert await hooks.list_deliveries("t2", hook.webhook_id, limit=10, after=None) == []


async def test_claims_take_the_oldest_due_delivery_of_each_endpoint(
        hooks: WebhookStore) -> None:
    a, b = await _hook(hooks), await _hook(hooks)
    a1, a2, b1 = _delivery(a, "s1"), _delivery(a, "s2"), _delivery(b, "s3")
    await hooks.add_deliveries([a1, a2, b1])
    now = utc_now() + timedelta(seconds=1)
    claimed = await hooks.claim_due(now, limit=10, lease=LEASE, exclude=[b.webhook_id])
    assert [d.delivery_id for d in claimed] == [a1.delivery_id]
    assert await hooks.claim_due(now, limit=10, lease=LEASE, exclude=[b.webhook_id]) == []
    # A dead sender's lease runs out: the delivery is claimable again.
    again = await hooks.claim_due(now + LEASE, limit=10, lease=LEASE, exclude=[b.webhook_id])
    assert [d.delivery_id for d in again] == [a1.delivery_id]
    await hooks.record_attempt(replace(a1, status=DeliveryStatus.DELIVERED, attempts=1,
                                       last_status_code=200, next_attempt_at=None))
    claimed = await hooks.claim_due(now + LEASE, limit=10, lease=LEASE)
    assert {d.delivery_id for d in claimed} == {a2.delivery_id, b1.delivery_id}
    later = now + timedelta(hours=1)
    await hooks.record_attempt(replace(a2, attempts=1, last_status_code=500,
                                       next_attempt_at=later))
    assert await hooks.next_due() is not None
    assert await hooks.claim_due(now + LEASE, limit=10, lease=LEASE,
                                 exclude=[b.webhook_id]) == []
    got = await hooks.get_delivery("t1", a.webhook_id, a2.delivery_id)
    assert got is not None
    assert got.attempts == 1
    assert got.next_attempt_at == later


async def test_delivery_pages_go_newest_first(hooks: WebhookStore) -> None:
    hook = await _hook(hooks)
    made = [_delivery(hook, f"s{i}") for i in range(5)]
    for d in made:
        await hooks.add_deliveries([d])
    first = await hooks.list_deliveries("t1", hook.webhook_id, limit=2, after=None)
    rest = await hooks.list_deliveries("t1", hook.webhook_id, limit=10,
                                       after=first[-1].delivery_id)
    assert [d.delivery_id for d in first + rest] == [d.delivery_id for d in reversed(made)]
