"""Typed settings of engines and stores: one definition each, filled from arguments or env vars.

Plain pydantic(-settings) models, so the core can hold them without importing an engine or a
database driver; each adapter takes its model (``TemporalEngine(store, settings=...)``) and
``Client.connect`` finds the adapter through the ``dvt.engines`` / ``dvt.stores`` entry points.
Arguments win over environment variables, which win over defaults:

- ``TemporalSettings``: ``DVT_TEMPORAL_ADDRESS``, ``DVT_TEMPORAL_NAMESPACE``,
  ``DVT_TEMPORAL_TASK_QUEUE``, ``DVT_TEMPORAL_API_KEY``, ... (``DVT_TEMPORAL_<FIELD>``)
- ``ConductorSettings``: ``DVT_CONDUCTOR_URL``, ``DVT_CONDUCTOR_TASK_PREFIX``, ...
- ``PostgresStoreSettings``: ``DVT_STORE_URL``, ``DVT_STORE_SCHEMA``, ``DVT_STORE_POOL_MAX``, ...
- ``ArtifactStoreSettings``: ``DVT_ARTIFACTS_URL``, ``DVT_ARTIFACTS_ENDPOINT_URL``, ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dvt_engine.errors import UsageError

DEFAULT_NAMESPACE = "default"
DEFAULT_TASK_QUEUE = "dvt"


def _usage(model: str, exc: ValidationError) -> UsageError:
    problems = [
        {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
        for err in exc.errors()
    ]
    fields = ", ".join(p["field"] or "(settings)" for p in problems)
    return UsageError(f"invalid {model}: {fields}", details={"errors": problems})


class _Settings(BaseSettings):
    """Shared behaviour: frozen, unknown fields refused, coded errors for bad values."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_nested_delimiter="__")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _usage(type(self).__name__, exc) from None

    @classmethod
    def from_options(cls, **options: Any) -> Self:
        """Settings from keyword options (``open_engine`` style); unknown ones are a usage error."""
        known = set(cls.model_fields)
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(
                f"unknown {cls.__name__} options: {', '.join(unknown)}",
                details={"unknown": unknown, "known": sorted(known)},
            )
        return cls(**{k: v for k, v in options.items() if v is not None})


class EngineSettings(_Settings):
    """What every engine takes: its entry-point name and the per-run signal rate limit."""

    engine_name: ClassVar[str] = ""
    signal_rate_limit_per_minute: int | None = 60

    def engine_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the engine class is constructed with (besides the store)."""
        return {"settings": self}


class ReferenceSettings(EngineSettings):
    """The in-process reference engine: no server; runs live as long as the process."""

    model_config = SettingsConfigDict(env_prefix="DVT_REFERENCE_")
    engine_name: ClassVar[str] = "reference"

    cancel_in_flight_on_pause: bool = False

    def engine_kwargs(self) -> dict[str, Any]:
        """The reference engine takes its options as plain arguments."""
        return {"signal_rate_limit_per_minute": self.signal_rate_limit_per_minute,
                "cancel_in_flight_on_pause": self.cancel_in_flight_on_pause}


class TlsSettings(BaseModel):
    """Client TLS: PEM file paths for the server CA and an optional client pair for mTLS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_root_ca_cert: str | None = None
    client_cert: str | None = None
    client_private_key: str | None = None
    domain: str | None = None


class TemporalSettings(EngineSettings):
    """Connection and behaviour of the Temporal engine. ``address`` is required to connect."""

    model_config = SettingsConfigDict(env_prefix="DVT_TEMPORAL_")
    engine_name: ClassVar[str] = "temporal"

    address: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    task_queue: str = DEFAULT_TASK_QUEUE
    tls: bool | TlsSettings = False
    api_key: SecretStr | None = None
    #: Host workers in this process (False: a client only; `dvt worker` hosts them elsewhere).
    worker: bool = True
    #: Step kinds routed to their own task queues (a step's own taskQueue wins).
    kind_queues: Mapping[str, str] = Field(default_factory=dict)
    #: Resource classes (plan v1.3) routed to task queues; an unmapped class runs on
    #: ``task_queue``. A step's taskQueue wins, then its class, then its kind.
    class_queues: Mapping[str, str] = Field(default_factory=dict)
    continue_as_new_after_steps: int = 50
    continue_as_new_history_bytes: int = 1_000_000
    cancel_in_flight_on_pause: bool = False
    #: A step whose worker died is retried after this long without a heartbeat.
    heartbeat_timeout_s: float = 10.0
    default_step_timeout_s: float = 24 * 3600.0
    #: Workflow runs kept in worker memory; 0 replays every workflow task from the start.
    max_cached_workflows: int = 1000
    #: "auto" asks the server which of dvt's search attributes are registered.
    search_attributes: bool | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _budgets(self) -> TemporalSettings:
        # UsageError (not ValueError) so pydantic passes it through with its code.
        if self.continue_as_new_after_steps < 1:
            raise UsageError("continue_as_new_after_steps must be >= 1")
        if self.continue_as_new_history_bytes < 10_000:
            raise UsageError("continue_as_new_history_bytes must be >= 10000")
        if self.heartbeat_timeout_s <= 0:
            raise UsageError("heartbeat_timeout_s must be > 0")
        return self

    def queue_for(self, kind: str, step_queue: str | None,
                  resource_class: str | None = None) -> str:
        """The task queue a step of ``kind`` (and ``resource_class``) runs on."""
        return (step_queue or self.class_queues.get(resource_class or "")
                or self.kind_queues.get(kind) or self.task_queue)

    def routed_queues(self) -> list[str]:
        """Every step queue the settings route kinds or classes to (workers serve them)."""
        return list(dict.fromkeys([*self.kind_queues.values(), *self.class_queues.values()]))


class ConductorSettings(EngineSettings):
    """Connection and behaviour of the Conductor engine. ``url`` is required to connect."""

    model_config = SettingsConfigDict(env_prefix="DVT_CONDUCTOR_")
    engine_name: ClassVar[str] = "conductor"

    #: The server's API root, e.g. ``http://conductor:8080/api`` (env ``DVT_CONDUCTOR_URL``).
    url: str | None = None
    worker: bool = True
    task_prefix: str = "dvt"
    #: Seconds a worker holds a step without extending it; a lost worker is noticed after about
    #: one lease (the worker host's lease watcher), so keep it short: running steps extend it.
    lease_s: int = 6
    crash_retries: int = 3
    owner_email: str = "dvt@localhost.invalid"
    step_queues: tuple[str, ...] = ()
    #: Resource classes (plan v1.3) routed to step queues (a task type each, as a step's
    #: taskQueue); an unmapped class runs as the default step type. A step's taskQueue wins.
    class_queues: Mapping[str, str] = Field(default_factory=dict)


class StoreSettings(_Settings):
    """What every store takes: the URL its entry point is found by."""

    def store_url(self) -> str:
        """The URL ``open_store`` is called with."""
        raise NotImplementedError

    def store_options(self) -> dict[str, Any]:
        """Extra keyword options for the store class."""
        return {}


class MemoryStoreSettings(StoreSettings):
    """The in-memory store: everything is lost when the process ends."""

    model_config = SettingsConfigDict(env_prefix="DVT_MEMORY_STORE_")

    def store_url(self) -> str:
        """Always ``memory://``."""
        return "memory://"


class PostgresStoreSettings(StoreSettings):
    """The PostgreSQL store (``pip install 'dvt[postgres]'``)."""

    model_config = SettingsConfigDict(env_prefix="DVT_STORE_")

    url: SecretStr = Field(description="postgresql://user:pw@host:5432/db")
    #: The schema inside the database (the URL's ``?schema=`` otherwise); DVT_STORE_SCHEMA_NAME.
    schema_name: str | None = None
    pool_min: int | None = None
    pool_max: int | None = None
    migrate: bool | None = None
    timeout: float | None = None

    def store_url(self) -> str:
        """The connection URL (with its password)."""
        return self.url.get_secret_value()

    def store_options(self) -> dict[str, Any]:
        """Only the options set here; the rest come from the URL or the store's defaults."""
        options = {"schema": self.schema_name, "pool_min": self.pool_min,
                   "pool_max": self.pool_max, "migrate": self.migrate, "timeout": self.timeout}
        return {k: v for k, v in options.items() if v is not None}


ARTIFACTS_DIR = "artifacts"


def dvt_home() -> Path:
    """The directory of dvt's local state (``DVT_HOME``, default ``~/.dvt``)."""
    return Path(os.environ.get("DVT_HOME") or Path.home() / ".dvt")


class ArtifactStoreSettings(_Settings):
    """Where step artifacts go (``DVT_ARTIFACTS_URL``, ``DVT_ARTIFACTS_ENDPOINT_URL``, ...).

    ``url`` picks the backend by scheme through the ``dvt.artifact_stores`` entry points:
    ``file:///srv/artifacts``, ``s3://bucket/prefix`` or ``memory://``; without one it is
    the local directory ``$DVT_HOME/artifacts``. S3 credentials are secret references
    (``env:NAME``) resolved when the store opens, never values in settings; without them
    the standard AWS chain applies (``AWS_ACCESS_KEY_ID``, profiles, instance roles).
    """

    model_config = SettingsConfigDict(env_prefix="DVT_ARTIFACTS_")

    url: str | None = Field(default=None, max_length=2048)
    #: An S3-protocol endpoint other than AWS (``http://127.0.0.1:9000``).
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id_ref: str | None = Field(default=None, max_length=500)
    secret_access_key_ref: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _no_credentials_in_url(self) -> ArtifactStoreSettings:
        if self.url is not None and urlsplit(self.url).password:
            raise UsageError("the artifact store URL holds a credential; give it as"
                             " secret_access_key_ref instead", details={"field": "url"})
        return self

    def store_url(self) -> str:
        """The URL ``open_artifact_store`` is called with (the local default filled in)."""
        return self.url or (dvt_home() / ARTIFACTS_DIR).resolve().as_uri()

    def store_options(self) -> dict[str, Any]:
        """Backend options set here (credentials stay references until the store opens)."""
        options = {"endpoint_url": self.endpoint_url, "region": self.region}
        return {k: v for k, v in options.items() if v is not None}

    def secret_refs(self) -> dict[str, str]:
        """The backend options given as secret references: option name to reference."""
        refs = {"access_key_id": self.access_key_id_ref,
                "secret_access_key": self.secret_access_key_ref}
        return {k: v for k, v in refs.items() if v is not None}
