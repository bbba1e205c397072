"""The options most `dvt` commands share, and the Settings they make."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from dvt_cli.session import import_handlers
from dvt_cli.settings import (
    DEFAULT_ENVIRONMENT,
    DEFAULT_PROJECT,
    DEFAULT_TENANT,
    ENGINE_NAMES,
    EngineAddresses,
    Identity,
    Settings,
)

F = TypeVar("F", bound=Callable[..., Any])


def store_options(f: F) -> F:
    """--store, the identity (--tenant, --project, --environment), engine addresses, --json."""
    options = [
        click.option("--store", "store_url", envvar="DVT_STORE_URL", metavar="URL",
                     help="State store URL (memory://, postgresql://...). [env DVT_STORE_URL]"),
        click.option("--tenant", envvar="DVT_TENANT", default=DEFAULT_TENANT, show_default=True,
                     help="Tenant that owns the runs. [env DVT_TENANT]"),
        click.option("--project", envvar="DVT_PROJECT", default=DEFAULT_PROJECT,
                     show_default=True, help="Project. [env DVT_PROJECT]"),
        click.option("--environment", envvar="DVT_ENVIRONMENT", default=DEFAULT_ENVIRONMENT,
                     show_default=True, help="Environment. [env DVT_ENVIRONMENT]"),
        click.option("--temporal-address", envvar="DVT_TEMPORAL_ADDRESS", metavar="HOST:PORT",
                     help="Temporal frontend; none = the local dev server. "
                          "[env DVT_TEMPORAL_ADDRESS]"),
        click.option("--temporal-namespace", envvar="DVT_TEMPORAL_NAMESPACE",
                     help="Temporal namespace. [env DVT_TEMPORAL_NAMESPACE]"),
        click.option("--temporal-task-queue", envvar="DVT_TEMPORAL_TASK_QUEUE",
                     help="Temporal task queue. [env DVT_TEMPORAL_TASK_QUEUE]"),
        click.option("--conductor-url", envvar="DVT_CONDUCTOR_URL", metavar="URL",
                     help="Conductor API URL. [env DVT_CONDUCTOR_URL]"),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def engine_option(f: F) -> F:
    """--engine (and --handlers, which an engine's worker needs)."""
    f = handlers_option(f)
    return click.option(
        "--engine", envvar="DVT_ENGINE", type=click.Choice(ENGINE_NAMES),
        help="Engine (default: temporal when installed, else reference). [env DVT_ENGINE]",
    )(f)


def handlers_option(f: F) -> F:
    """--handlers: modules to import so their step kinds are known."""
    return click.option(
        "--handlers", "handler_modules", envvar="DVT_HANDLERS", metavar="MODULE[,MODULE]",
        help="Import these modules first, so their @step_handler kinds are known "
             "(installed dvt.step_handlers entry points load anyway). [env DVT_HANDLERS]",
    )(f)


def live_option(f: F) -> F:
    """--no-live: plain event lines even on a terminal."""
    return click.option(
        "--no-live", is_flag=True,
        help="Plain event lines even on a terminal (no live progress display). "
             "[env DVT_NO_LIVE=1]",
    )(f)


def settings_from(kw: dict[str, Any], engine: str | None = None) -> Settings:
    """The Settings of a command, taking the shared options out of its keyword arguments."""
    import_handlers(kw.pop("handler_modules", None))
    return Settings(
        store_url=kw.pop("store_url"),
        engine=engine,
        identity=Identity(kw.pop("tenant"), kw.pop("project"), kw.pop("environment")),
        addresses=EngineAddresses(
            temporal_address=kw.pop("temporal_address"),
            temporal_namespace=kw.pop("temporal_namespace"),
            temporal_task_queue=kw.pop("temporal_task_queue"),
            conductor_url=kw.pop("conductor_url"),
        ),
        json=kw.pop("as_json"),
    )
