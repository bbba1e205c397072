"""How dvt talks to a Temporal cluster: the SDK side of the core's TemporalSettings.

The settings model itself lives in ``dvt_engine.settings`` (one definition, pure pydantic, so
hosts build it without importing temporalio); this module turns it into an SDK connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.service import TLSConfig

from dvt_adapters_temporal.converter import DATA_CONVERTER
from dvt_engine.errors import EngineNotConfigured, EngineUnavailable
from dvt_engine.settings import (
    DEFAULT_NAMESPACE,
    DEFAULT_TASK_QUEUE,
    TemporalSettings,
    TlsSettings,
)

DEFAULT_ADDRESS_ENV = "DVT_TEMPORAL_ADDRESS"
WORKFLOW_NAME = "dvt.Run"

__all__ = [
    "DEFAULT_ADDRESS_ENV",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TASK_QUEUE",
    "WORKFLOW_NAME",
    "TemporalSettings",
    "TlsSettings",
    "connect",
    "sdk_tls",
]


def sdk_tls(tls: TlsSettings) -> TLSConfig:
    """The SDK's TLSConfig with the PEM files read."""

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return TLSConfig(
        server_root_ca_cert=read(tls.server_root_ca_cert),
        client_cert=read(tls.client_cert),
        client_private_key=read(tls.client_private_key),
        domain=tls.domain,
    )


def not_configured() -> EngineNotConfigured:
    """The error for an engine without an address: dvt never starts a server behind a call."""
    return EngineNotConfigured(
        "no Temporal address is configured",
        details={"hint": f"pass TemporalSettings(address=...) or set {DEFAULT_ADDRESS_ENV}; "
                         "for a local server run `dvt dev up` (or use the test fixtures)"},
    )


async def connect(settings: TemporalSettings, *, data_converter: Any | None = None) -> Client:
    """Connect to the configured cluster; ENGINE_UNAVAILABLE with the cause when it fails."""
    if not settings.address:
        raise not_configured()
    tls: bool | TLSConfig = (
        sdk_tls(settings.tls) if isinstance(settings.tls, TlsSettings) else settings.tls
    )
    # dvt's converter writes the SDK's own JSON and only decodes its records faster.
    kwargs: dict[str, Any] = {"namespace": settings.namespace, "tls": tls,
                              "data_converter": data_converter or DATA_CONVERTER}
    if settings.api_key is not None:
        kwargs["api_key"] = settings.api_key.get_secret_value()
        # API keys are only sent over TLS.
        kwargs["tls"] = tls or True
    try:
        return await Client.connect(settings.address, **kwargs)
    except Exception as exc:
        raise EngineUnavailable(
            f"cannot reach Temporal at {settings.address} (namespace {settings.namespace}): {exc}",
            details={"address": settings.address, "namespace": settings.namespace},
            retryable=True,
        ) from exc
