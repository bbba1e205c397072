"""The service's settings: one pydantic model, like the core's store and engine settings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dvt_engine.access import DEFAULT_IDEMPOTENCY_TTL, check_idempotency_ttl
from dvt_engine.admission import LimitSettings
from dvt_engine.cost import PriceTable
from dvt_engine.errors import UsageError
from dvt_engine.settings import (
    ArtifactStoreSettings,
    EngineSettings,
    MemoryStoreSettings,
    ReferenceSettings,
    StoreSettings,
)
from dvt_engine.webhooks import DEFAULT_RETRY_SCHEDULE


class ApiSettings(BaseSettings):
    """What ``create_app`` needs: the store, the engine and the service's own limits.

    Arguments win over environment variables (``DVT_API_<FIELD>``, e.g.
    ``DVT_API_MAX_BODY_BYTES``), which win over the defaults.
    """

    model_config = SettingsConfigDict(env_prefix="DVT_API_", extra="forbid", frozen=True,
                                      arbitrary_types_allowed=True)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
            raise UsageError(f"invalid ApiSettings: {fields}", details={"errors": [
                {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                for e in exc.errors()]}) from None

    store: StoreSettings = Field(default_factory=MemoryStoreSettings)
    #: Tenant limits (docs/limits.md): defaults for every tenant, enforced when ``enabled``.
    limits: LimitSettings = Field(default_factory=LimitSettings)
    #: What usage costs (docs/cost.md): units per step second, per artifact MiB, per run.
    prices: PriceTable = Field(default_factory=PriceTable)
    engine: EngineSettings = Field(default_factory=ReferenceSettings)
    #: Where steps put artifacts; None: ``DVT_ARTIFACTS_*``, else ``$DVT_HOME/artifacts``.
    artifacts: ArtifactStoreSettings | None = None
    #: Allows the in-memory store (everything is lost when the process ends).
    dev: bool = False
    #: A key registered at start-up with every role for ``dev_tenant`` (only with ``dev``):
    #: how a throwaway in-memory service gets its first key. Never for a lasting store.
    dev_key: SecretStr | None = None
    dev_tenant: str = "default"
    #: Project and environment of runs created through the API (one per service for now).
    project: str = "default"
    environment: str = "default"
    #: Request bodies larger than this are refused with 413 PAYLOAD_TOO_LARGE.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    idempotency_ttl: timedelta = DEFAULT_IDEMPOTENCY_TTL
    #: A comment line is sent on an idle stream this often (the contract asks for <= 15 s).
    sse_heartbeat_s: float = Field(default=15.0, gt=0, le=15.0)
    #: The reconnect delay the stream suggests to clients (``retry:``).
    sse_retry_ms: int = Field(default=2000, ge=0)
    #: A client that cannot take an event within this long is dropped (it resumes by cursor).
    sse_send_timeout_s: float = Field(default=10.0, gt=0)
    #: Events queued per tenant-stream client; a client further behind is dropped and
    #: resumes by cursor.
    sse_client_queue: int = Field(default=1000, ge=1)

    #: /metrics reads the store-wide gauges (active runs, outbox backlog) at most this often;
    #: scrapes in between reuse the last read.
    metrics_store_ttl_s: float = Field(default=5.0, ge=0, le=300)

    #: Webhook target hosts exempt from the public-address rule (``--allow-webhook-host``).
    webhook_allowed_hosts: tuple[str, ...] = ()
    #: Delays before the 2nd, 3rd, ... attempt of a webhook delivery (+-20 % jitter each);
    #: after the last one the delivery is ``failed``. Default: about three days.
    webhook_retry_schedule: tuple[timedelta, ...] = Field(default=DEFAULT_RETRY_SCHEDULE,
                                                          min_length=1, max_length=50)
    #: A receiver must answer 2xx within this long.
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    #: An endpoint failing without a success for this long is disabled.
    webhook_disable_after: timedelta = timedelta(days=5)
    #: Deliveries in flight at once to one endpoint, per service process.
    webhook_endpoint_concurrency: int = Field(default=1, ge=1, le=32)

    @model_validator(mode="after")
    def _check(self) -> ApiSettings:
        check_idempotency_ttl(self.idempotency_ttl)
        if self.dev_key is not None and not self.dev:
            raise UsageError("dev_key is only for a dev service (dev=True)")
        if self.store.store_url().startswith("memory:") and not self.dev:
            raise UsageError("the in-memory store loses every run on exit; use a PostgreSQL "
                             "store, or dev=True (`dvt serve --dev`) for a throwaway service")
        return self

    @property
    def engine_name(self) -> str:
        """The entry-point name of the engine served."""
        return type(self.engine).engine_name

    def describe(self) -> dict[str, Any]:
        """What the service runs on, without secrets (for the start-up log line)."""
        return {"engine": self.engine_name, "store": self.store.store_url().split(":", 1)[0],
                "dev": self.dev}
