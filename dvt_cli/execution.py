"""Running a command body: asyncio, coded errors with hints, exit codes, no tracebacks."""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import click

from dvt_cli.output import EXIT_INTERNAL, EXIT_REFUSED, emit_json, print_error
from dvt_engine.errors import DvtError

DEBUG_ENV = "DVT_DEBUG"


def execute(as_json: bool, body: Callable[[], Awaitable[int]]) -> None:
    """Run an async command body and exit with its code; errors become coded output."""
    try:
        code = asyncio.run(_guarded(body))
    except DvtError as error:
        print_error(error, as_json=as_json)
        code = EXIT_REFUSED
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = 130
    except Exception as error:  # the last line of defence: a message, never a traceback
        code = EXIT_INTERNAL
        _internal(error, as_json)
    raise click.exceptions.Exit(code)


async def _guarded(body: Callable[[], Awaitable[int]]) -> int:
    return await body()


def _internal(error: BaseException, as_json: bool) -> None:
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(error)
    message = f"{type(error).__name__}: {error}"
    hint = f"this is a bug in dvt or an adapter; set {DEBUG_ENV}=1 to see the traceback"
    if as_json:
        emit_json({"error": {"code": "INTERNAL_ERROR", "message": message,
                             "details": {"retryable": False, "hint": hint}}})
    else:
        click.echo(f"error INTERNAL_ERROR: {message}", err=True)
        click.echo(f"hint: {hint}", err=True)


def json_requested(args: list[str] | tuple[str, ...] | Any) -> bool:
    """True when ``--json`` appears on the command line (for errors before options parse)."""
    return isinstance(args, list | tuple) and "--json" in args
