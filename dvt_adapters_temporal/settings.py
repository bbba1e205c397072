"""How dvt talks to a Temporal cluster and how its interpreter workflow behaves."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.service import TLSConfig

from dvt_engine.errors import EngineUnavailable, UsageError

DEFAULT_ADDRESS_ENV = "DVT_TEMPORAL_ADDRESS"
DEFAULT_NAMESPACE = "default"
DEFAULT_TASK_QUEUE = "dvt"
WORKFLOW_NAME = "dvt.Run"


@dataclass(frozen=True)
class TlsSettings:
    """Client TLS: file paths (PEM) for the server CA and an optional client pair for mTLS."""

    server_root_ca_cert: str | None = None
    client_cert: str | None = None
    client_private_key: str | None = None
    domain: str | None = None

    def to_sdk(self) -> TLSConfig:
        """The SDK's TLSConfig with the PEM files read."""

        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return TLSConfig(
            server_root_ca_cert=read(self.server_root_ca_cert),
            client_cert=read(self.client_cert),
            client_private_key=read(self.client_private_key),
            domain=self.domain,
        )


@dataclass(frozen=True)
class TemporalSettings:
    """Connection and behaviour settings of the Temporal engine."""

    address: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    task_queue: str = DEFAULT_TASK_QUEUE
    tls: bool | TlsSettings = False
    api_key: str | None = None
    # Step kinds routed to their own task queues (a step's own taskQueue wins).
    kind_queues: Mapping[str, str] = field(default_factory=dict)
    continue_as_new_after_steps: int = 50
    continue_as_new_history_bytes: int = 1_000_000
    cancel_in_flight_on_pause: bool = False
    # A step whose worker died is retried after this long without a heartbeat.
    heartbeat_timeout_s: float = 10.0
    default_step_timeout_s: float = 24 * 3600.0
    # Workflow runs kept in worker memory; 0 replays every workflow task from the start.
    max_cached_workflows: int = 1000
    # Search attributes: "auto" asks the server which of dvt's are registered.
    search_attributes: bool | str = "auto"

    def __post_init__(self) -> None:
        if self.continue_as_new_after_steps < 1:
            raise UsageError("continue_as_new_after_steps must be >= 1")
        if self.continue_as_new_history_bytes < 10_000:
            raise UsageError("continue_as_new_history_bytes must be >= 10000")
        if self.heartbeat_timeout_s <= 0:
            raise UsageError("heartbeat_timeout_s must be > 0")

    @classmethod
    def from_options(cls, **options: Any) -> TemporalSettings:
        """Settings from open_engine keyword options; unknown options are a usage error."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(
                f"unknown Temporal engine options: {', '.join(unknown)}",
                details={"unknown": unknown, "known": sorted(known)},
            )
        tls = options.get("tls")
        if isinstance(tls, Mapping):
            options["tls"] = TlsSettings(**tls)
        if options.get("address") is None:
            options["address"] = os.environ.get(DEFAULT_ADDRESS_ENV)
        return cls(**options)

    def queue_for(self, kind: str, step_queue: str | None) -> str:
        """The task queue a step of `kind` runs on."""
        return step_queue or self.kind_queues.get(kind) or self.task_queue


async def connect(settings: TemporalSettings, *, data_converter: Any | None = None) -> Client:
    """Connect to the configured cluster; ENGINE_UNAVAILABLE with the cause when it fails."""
    if not settings.address:
        raise UsageError(
            "no Temporal address configured",
            details={"hint": f"pass address=... or set {DEFAULT_ADDRESS_ENV}"},
        )
    tls: bool | TLSConfig = (
        settings.tls.to_sdk() if isinstance(settings.tls, TlsSettings) else settings.tls
    )
    kwargs: dict[str, Any] = {"namespace": settings.namespace, "tls": tls}
    if settings.api_key:
        kwargs["api_key"] = settings.api_key
        # API keys are only sent over TLS.
        kwargs["tls"] = tls or True
    if data_converter is not None:
        kwargs["data_converter"] = data_converter
    try:
        return await Client.connect(settings.address, **kwargs)
    except Exception as exc:
        raise EngineUnavailable(
            f"cannot reach Temporal at {settings.address} (namespace {settings.namespace}): {exc}",
            details={"address": settings.address, "namespace": settings.namespace},
            retryable=True,
        ) from exc
