"""What the routes work with: the store, the access store, the engine, metrics; opened once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from dvt_api.budget_alerts import announce_crossings
from dvt_api.engine_probe import EngineProbe, probe_for
from dvt_api.hub import TenantHub
from dvt_api.measured_store import MeasuredStore
from dvt_api.metrics import ApiMetrics
from dvt_api.run_observer import RunObserver
from dvt_api.settings import ApiSettings
from dvt_api.store_gauges import StoreGauges, reader_for
from dvt_engine.access import (
    ApiKey,
    ApiKeyStore,
    ApiRole,
    IdempotencyStore,
    TenantPlans,
    hash_api_key,
)
from dvt_engine.admission import AdmissionStore, LimitSettings
from dvt_engine.admission import Dispatcher as AdmissionDispatcher
from dvt_engine.cost import BudgetWatch
from dvt_engine.eventlog import utc_now
from dvt_engine.models.events import Event
from dvt_engine.plugins import open_configured_artifact_store, open_engine, open_store
from dvt_engine.ports import RunStateStore, WorkflowEngine
from dvt_engine.steps.registry import HandlerRegistry, default_registry
from dvt_engine.stores.memory_access import MemoryAccessStore
from dvt_engine.stores.memory_admission import MemoryAdmissionStore
from dvt_engine.stores.memory_webhooks import MemoryWebhookStore
from dvt_engine.waiting import cancel_and_wait
from dvt_engine.webhooks import WebhookStore


@dataclass
class Services:
    """The service's open resources; routes get it through ``services(request)``."""

    settings: ApiSettings
    store: RunStateStore
    access: Any  # ApiKeyStore, IdempotencyStore and TenantPlans in one object
    engine: WorkflowEngine
    registry: HandlerRegistry
    metrics: ApiMetrics
    hub: TenantHub
    webhooks: WebhookStore | None = None
    dispatcher: Any = None  # dvt_api.webhook_dispatch.Dispatcher
    gauges: StoreGauges | None = None
    admission: AdmissionStore | None = None
    admission_dispatcher: AdmissionDispatcher | None = None
    engine_probe: EngineProbe | None = None

    @property
    def keys(self) -> ApiKeyStore:
        """The API-key port."""
        keys: ApiKeyStore = self.access
        return keys

    @property
    def plans(self) -> TenantPlans:
        """Which tenant has which plan."""
        plans: TenantPlans = self.access
        return plans

    @property
    def idempotency(self) -> IdempotencyStore:
        """The idempotency port."""
        idem: IdempotencyStore = self.access
        return idem


async def open_access(url: str) -> Any:
    """The access store that lives next to the run store of ``url``."""
    if url.startswith("memory:"):
        return MemoryAccessStore()
    from dvt_statestore_pg.access import PostgresAccessStore

    return await PostgresAccessStore.open(url)


async def open_admission(url: str, store: RunStateStore,
                         settings: LimitSettings) -> AdmissionStore:
    """The admission store that lives next to the run store of ``url``."""
    if url.startswith("memory:"):
        return MemoryAdmissionStore(store, settings)
    from dvt_statestore_pg.admission import PostgresAdmissionStore

    return await PostgresAdmissionStore.open(url, settings)


async def open_webhooks(url: str) -> WebhookStore:
    """The webhook store that lives next to the run store of ``url``."""
    if url.startswith("memory:"):
        return MemoryWebhookStore()
    from dvt_statestore_pg.webhooks import PostgresWebhookStore

    return await PostgresWebhookStore.open(url)


@contextlib.asynccontextmanager
async def open_services(settings: ApiSettings, registry: HandlerRegistry | None,
                        metrics: ApiMetrics) -> AsyncIterator[Services]:
    """Open store, access store and engine; close them in reverse order on exit."""
    async with contextlib.AsyncExitStack() as stack:
        opened = await open_store(settings.store)
        stack.push_async_callback(opened.close)
        store = MeasuredStore(opened, metrics)
        observer = RunObserver(store, metrics)
        store.on_append(observer.appended)
        # Run metrics come from the outbox when the store keeps one (each event counted by
        # one process of all that share the store), otherwise from this process's appends.
        from_outbox = bool(getattr(getattr(opened, "config", None), "outbox", False)) \
            and hasattr(opened, "claim_outbox")
        # Budgets are checked as committed events charge a tenant (limits enforced only).
        watch: BudgetWatch | None = None

        async def committed(events: Sequence[Event], *, reader: str | None = None) -> None:
            await observer.committed(events, reader=reader)
            if watch is not None:
                watch.saw(events)

        if not from_outbox:
            store.on_append(lambda event: committed([event]))
        metrics.start_series(settings.engine_name)
        access = await open_access(settings.store.store_url())
        if hasattr(access, "close"):
            stack.push_async_callback(access.close)
        reg = registry if registry is not None else default_registry()
        artifacts = await open_configured_artifact_store(settings.artifacts)
        if artifacts is not None:
            stack.push_async_callback(artifacts.close)
        engine = open_engine(settings.engine, store=store, registry=reg, artifacts=artifacts)
        if settings.dev_key is not None:
            await _register_dev_key(access, settings)
        purger = asyncio.create_task(_purge_forever(access), name="dvt-idempotency-purge")

        async def stop_purger() -> None:
            await cancel_and_wait(purger)

        stack.push_async_callback(stop_purger)
        stack.push_async_callback(engine.close)
        hub = TenantHub(store, metrics, client_queue=settings.sse_client_queue)
        stack.push_async_callback(hub.close)
        webhooks = await open_webhooks(settings.store.store_url())
        if hasattr(webhooks, "close"):
            stack.push_async_callback(webhooks.close)
        from dvt_api.webhook_dispatch import Dispatcher

        dispatcher = Dispatcher(
            store, webhooks, settings, metrics,
            on_events=functools.partial(committed, reader="outbox") if from_outbox else None)
        dispatcher.start()
        stack.push_async_callback(dispatcher.stop)
        admission = await open_admission(settings.store.store_url(), store, settings.limits)
        stack.push_async_callback(admission.close)
        starter = AdmissionDispatcher(admission, engine) if settings.limits.enabled else None
        if starter is not None:
            starter.start()
            stack.push_async_callback(starter.stop)
        services = Services(settings=settings, store=store, access=access, engine=engine,
                            registry=reg, metrics=metrics, hub=hub, webhooks=webhooks,
                            dispatcher=dispatcher,
                            gauges=StoreGauges(reader_for(opened), metrics,
                                               settings.metrics_store_ttl_s),
                            admission=admission, admission_dispatcher=starter,
                            engine_probe=EngineProbe(settings.engine_name, probe_for(engine),
                                                     metrics))
        if settings.limits.enabled:
            watch = BudgetWatch(admission, store, lambda: settings.prices,
                                functools.partial(announce_crossings, services))
            stack.push_async_callback(watch.close)
        yield services

log = logging.getLogger("dvt_api")
#: Expired idempotency records are deleted this often (a claim takes an expired key over
#: anyway; this only keeps the table small). One query an hour keeps an idle service quiet.
PURGE_EVERY_S = 3600.0


async def _purge_forever(store: IdempotencyStore) -> None:
    while True:
        try:
            await store.purge_expired()
        except Exception as exc:  # the next round tries again; requests are unaffected
            log.warning("idempotency purge failed", extra={"code": type(exc).__name__})
        await asyncio.sleep(PURGE_EVERY_S)


async def _register_dev_key(keys: ApiKeyStore, settings: ApiSettings) -> None:
    """The dev service's first key: every role, for the dev tenant."""
    assert settings.dev_key is not None
    key_hash = hash_api_key(settings.dev_key.get_secret_value())
    if await keys.key_by_hash(key_hash) is None:
        await keys.create_key(ApiKey(key_id="key_dev", tenant_id=settings.dev_tenant,
                                     roles=tuple(ApiRole), key_hash=key_hash,
                                     created_at=utc_now(), name="dev"))
