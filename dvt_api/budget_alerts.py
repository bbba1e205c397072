"""Budget threshold crossings announced: a log line, a metric and a ``budget.threshold``
webhook to the tenant's subscribers (docs/cost.md). Each crossing is recorded once per
tenant, month and threshold before it gets here, so it is announced once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dvt_engine.admission import BudgetCrossing
from dvt_engine.eventlog import utc_now
from dvt_engine.webhooks import BUDGET_THRESHOLD, Delivery, mint_delivery_id

if TYPE_CHECKING:  # services announces the crossings its budget watch records
    from dvt_api.services import Services

log = logging.getLogger("dvt_api.budget")


async def announce_crossings(svc: Services, crossings: Sequence[BudgetCrossing]) -> None:
    """Log, count and queue the webhook deliveries of crossings recorded just now."""
    for crossing in crossings:
        log.warning("budget threshold crossed", extra=crossing.document())
        svc.metrics.budget_crossed(crossing.threshold)
        if svc.webhooks is None:
            continue
        hooks = await svc.webhooks.subscribers(crossing.tenant_id, BUDGET_THRESHOLD)
        if not hooks:
            continue
        now = utc_now()
        payload = {"type": BUDGET_THRESHOLD, "timestamp": now.isoformat(),
                   "data": crossing.document()}
        # Unique per (webhook, source): a crossing never yields two deliveries to one hook.
        source = f"{crossing.tenant_id}/budget/{crossing.month}/{crossing.threshold}"
        await svc.webhooks.add_deliveries([
            Delivery(delivery_id=mint_delivery_id(), webhook_id=h.webhook_id,
                     tenant_id=h.tenant_id, event_type=BUDGET_THRESHOLD, run_id="",
                     source=source, payload=payload, created_at=now, next_attempt_at=now)
            for h in hooks])
        if svc.dispatcher is not None:
            svc.dispatcher.poke()
