"""`dvt serve` (the HTTP service on uvicorn) and `dvt keys` (API keys from the shell).

dvt_api is imported inside the commands, so the rest of the CLI works without the `api` extra.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import click

from dvt_cli.execution import execute
from dvt_cli.output import emit_json, notice, say
from dvt_cli.session import import_handlers
from dvt_cli.settings import ENGINE_NAMES
from dvt_engine.errors import UsageError
from dvt_engine.settings import (
    ConductorSettings,
    EngineSettings,
    MemoryStoreSettings,
    PostgresStoreSettings,
    ReferenceSettings,
    StoreSettings,
    TemporalSettings,
)

_STORE = click.option("--store", "store_url", envvar="DVT_STORE_URL", metavar="URL",
                      help="State store URL (default: the `dvt dev up` PostgreSQL). "
                           "[env DVT_STORE_URL]")


def _store_url(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    from dvt_cli import devenv

    url, _ = devenv.running_setup()
    return url


def store_settings(url: str | None) -> StoreSettings:
    """Typed store settings for a URL (memory:// when none)."""
    if not url or url.startswith("memory:"):
        return MemoryStoreSettings()
    return PostgresStoreSettings(url=url)


def engine_settings(name: str, *, workers: bool, temporal_address: str | None,
                    conductor_url: str | None) -> EngineSettings:
    """Typed settings of the served engine."""
    if name == "temporal":
        if not temporal_address:
            from dvt_cli import devenv

            temporal_address = devenv.running_setup()[1].temporal_address
        return TemporalSettings(address=temporal_address, worker=workers)
    if name == "conductor":
        return ConductorSettings(url=conductor_url, worker=workers)
    return ReferenceSettings()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="DVT_API_HOST")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              envvar="DVT_API_PORT")
@_STORE
@click.option("--engine", envvar="DVT_ENGINE", type=click.Choice(ENGINE_NAMES),
              default="reference", show_default=True, help="Engine runs are started on.")
@click.option("--handlers", "handler_modules", envvar="DVT_HANDLERS", metavar="MODULE[,MODULE]",
              help="Import these modules first, so their @step_handler kinds are known.")
@click.option("--no-workers", is_flag=True,
              help="Host no engine workers here (`dvt worker` runs them elsewhere).")
@click.option("--dev", is_flag=True, help="Allow the in-memory store (everything is lost).")
@click.option("--temporal-address", envvar="DVT_TEMPORAL_ADDRESS", metavar="HOST:PORT")
@click.option("--conductor-url", envvar="DVT_CONDUCTOR_URL", metavar="URL")
@click.option("--allow-webhook-host", "webhook_hosts", multiple=True, metavar="HOST",
              help="Allow webhooks to this host although it is not a public address "
                   "(repeatable; e.g. 127.0.0.1 for a local receiver).")
def serve(host: str, port: int, store_url: str | None, engine: str,
          handler_modules: str | None, no_workers: bool, dev: bool,
          temporal_address: str | None, conductor_url: str | None,
          webhook_hosts: tuple[str, ...]) -> None:
    """Serve the HTTP API until Ctrl-C or SIGTERM (open requests finish first)."""

    async def body() -> int:
        import uvicorn

        from dvt_api import ApiSettings, create_app, logs
        from dvt_cli.session import handler_registry

        import_handlers(handler_modules)
        store = store_settings(_store_url(store_url))
        dev_key = None
        if dev and isinstance(store, MemoryStoreSettings):
            # Nothing outlives this process, so `dvt keys` cannot reach its keys: it makes one.
            from dvt_engine.access import mint_api_key

            dev_key = mint_api_key()[1]
            say(f"dev API key (tenant default, every role): {dev_key}")
        extra: dict[str, Any] = {"webhook_allowed_hosts": webhook_hosts} if webhook_hosts else {}
        settings = ApiSettings(
            store=store, dev=dev, dev_key=dev_key, **extra,
            engine=engine_settings(engine, workers=not no_workers,
                                   temporal_address=temporal_address,
                                   conductor_url=conductor_url))
        logs.configure()
        app = create_app(settings, registry=handler_registry())
        config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_config=None,
                                timeout_graceful_shutdown=10, server_header=False,
                                proxy_headers=False)
        server = uvicorn.Server(config)
        with _sigterm_is_a_graceful_stop():
            await server.serve()
        return 0 if server.started else 1

    execute(False, body)


@contextlib.contextmanager
def _sigterm_is_a_graceful_stop() -> Iterator[None]:
    """Exit 0, not -15, after uvicorn stopped gracefully on SIGTERM.

    uvicorn handles SIGTERM itself and, once shut down, raises it again to the handler it found
    installed; by default that one kills the process, so a clean stop looked like a crash to
    service managers. The handler it finds here ignores it; the default comes back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals belong to the main thread; uvicorn installs no handler either
        return
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group()
def keys() -> None:
    """API keys of the HTTP service (bootstrap and break-glass)."""


async def _access(url: str | None) -> Any:
    if not url or url.startswith("memory:"):
        raise UsageError("API keys need a lasting store: pass --store postgresql://... "
                         "(or run `dvt dev up`)")
    from dvt_api.services import open_access

    return await open_access(url)


def _key_json(key: Any) -> dict[str, Any]:
    return {"keyId": key.key_id, "tenantId": key.tenant_id,
            "roles": [r.value for r in key.roles], "name": key.name,
            "createdAt": key.created_at.isoformat(),
            "revokedAt": key.revoked_at.isoformat() if key.revoked_at else None}


@keys.command("create")
@click.option("--tenant", required=True, envvar="DVT_TENANT")
@click.option("--role", "roles", multiple=True, required=True,
              help="reader, runner, operator, approver, admin or auditor (repeatable).")
@click.option("--name", help="A label for people.")
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def create(tenant: str, roles: tuple[str, ...], name: str | None, store_url: str | None,
           as_json: bool) -> None:
    """Create a key; it is printed once and stored only as a hash."""

    async def body() -> int:
        from dvt_api.routes.keys import create_key
        from dvt_engine.access import parse_api_roles
        from dvt_engine.identifiers import validate_identifier

        validate_identifier("tenant", tenant)
        parsed = parse_api_roles(roles)
        access = await _access(_store_url(store_url))
        try:
            made = await create_key(access, tenant, list(parsed), name)
        finally:
            await access.close()
        if as_json:
            emit_json({"keyId": made.key_id, "key": made.key, "tenantId": made.tenant_id,
                       "roles": [r.value for r in made.roles], "name": made.name})
        else:
            say(f"{made.key_id}  tenant {made.tenant_id}  roles {','.join(parsed)}")
            say(made.key)
            notice("dvt: the key is shown only now; store it in a secret manager")
        return 0

    execute(as_json, body)


@keys.command("list")
@click.option("--tenant", required=True, envvar="DVT_TENANT")
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(tenant: str, store_url: str | None, as_json: bool) -> None:
    """List a tenant's keys (never their secrets)."""

    async def body() -> int:
        access = await _access(_store_url(store_url))
        try:
            found = await access.list_keys(tenant)
        finally:
            await access.close()
        if as_json:
            emit_json({"items": [_key_json(k) for k in found]})
        for k in [] if as_json else found:
            state = "revoked" if k.revoked_at else "active"
            say(f"{k.key_id}  {state:7}  {','.join(r.value for r in k.roles)}  {k.name or ''}")
        return 0

    execute(as_json, body)


@keys.command("revoke")
@click.argument("key_id", metavar="KEY_ID")
@click.option("--tenant", required=True, envvar="DVT_TENANT")
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def revoke(key_id: str, tenant: str, store_url: str | None, as_json: bool) -> None:
    """Revoke a key at once; its next request is refused."""

    async def body() -> int:
        access = await _access(_store_url(store_url))
        try:
            done = await access.revoke_key(tenant, key_id)
        finally:
            await access.close()
        if not done:
            raise UsageError(f"tenant {tenant!r} has no key {key_id!r}",
                             details={"keyId": key_id})
        if as_json:
            emit_json({"keyId": key_id, "revoked": True})
        else:
            say(f"{key_id} revoked")
        return 0

    execute(as_json, body)
