"""``create_app(settings)``: wiring only. Routes, schemas, problems and streams live elsewhere."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from dvt_api import console, openapi_doc, problems
from dvt_api.metrics import ApiMetrics
from dvt_api.middleware import RequestMiddleware
from dvt_api.routes import (
    audit,
    events,
    health,
    keys,
    limits,
    metrics,
    plans,
    runs,
    signals,
    stream,
    usage,
    webhooks,
)
from dvt_api.services import open_services
from dvt_api.settings import ApiSettings
from dvt_engine import __version__
from dvt_engine.steps.registry import HandlerRegistry

log = logging.getLogger("dvt_api")
ROUTERS = (health.router, metrics.router, plans.router, runs.router, events.router,
           signals.router, keys.router, webhooks.router, stream.router, limits.router,
           usage.router, audit.router)


def create_app(settings: ApiSettings, *, registry: HandlerRegistry | None = None) -> FastAPI:
    """The ASGI app of the API over the store and engine of ``settings``.

    The store and the engine are opened when the app starts (ASGI lifespan) and closed when
    it stops; ``registry`` holds the step handlers the engine runs (default: built-ins and
    installed entry points).
    """
    app_metrics = ApiMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, registry, app_metrics) as svc:
            app.state.services = svc
            log.info("service ready", extra=settings.describe())
            yield
        log.info("service stopped")

    app = FastAPI(title="dvt API", version=__version__, lifespan=lifespan,
                  openapi_url="/openapi.json", docs_url="/docs", redoc_url=None,
                  description="Run execution plans on a workflow engine; the event log is the "
                              "truth. Errors are problem+json (RFC 9457) with a stable code.")
    for router in ROUTERS:
        app.include_router(router)
    console.install(app)
    problems.install(app)
    openapi_doc.install(app)
    app.add_middleware(RequestMiddleware, metrics=app_metrics,
                       max_body_bytes=settings.max_body_bytes)
    return app
