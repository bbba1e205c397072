"""Running a command body: asyncio, coded errors with hints, exit codes, no tracebacks."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import click

from dvt_cli.output import EXIT_INTERNAL, EXIT_REFUSED, emit_json, print_error, say
from dvt_engine.errors import DvtError

DEBUG_ENV = "DVT_DEBUG"
# Native extensions whose own OS threads outlive the work of a command and may call back into
# Python while the interpreter finalizes. The Temporal SDK's core runs a Tokio runtime behind
# PyO3 that the SDK can neither stop nor join (temporalio/sdk-python#300 is open upstream):
# closing workers does not end it, and clients have no close. A callback from one of its
# threads during finalization aborts the process ("Fatal Python error: PyGILState_Release ...
# finalizing", exit 134) or crashes it (139) after the command's output was printed.
NATIVE_RUNTIME_MODULES = ("temporalio.bridge.temporal_sdk_bridge",)


def execute(as_json: bool, body: Callable[[], Awaitable[int]]) -> None:
    """Run an async command body and exit with its code; errors become coded output."""
    try:
        code = asyncio.run(_guarded(body))
    except DvtError as error:
        print_error(error, as_json=as_json)
        code = EXIT_REFUSED
    except KeyboardInterrupt:
        say("interrupted", err=True)
        code = 130
    except BrokenPipeError:
        code = _reader_gone()
    except Exception as error:  # the last line of defence: a message, never a traceback
        code = EXIT_INTERNAL
        _internal(error, as_json)
    raise click.exceptions.Exit(code)


#: The status of a process whose output pipe was closed by its reader (128 + SIGPIPE), as the
#: shell reports for tools the signal ends (`dvt events RUN -f | head`).
EXIT_PIPE_CLOSED = 141


def _reader_gone() -> int:
    # Nothing more can be said on stdout; point it at /dev/null so the flush at exit does not
    # fail a second time. The run itself is unaffected: it lives in its engine and store.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_PIPE_CLOSED


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
        say(f"error INTERNAL_ERROR: {message}", err=True)
        say(f"hint: {hint}", err=True)


def json_requested(args: list[str] | tuple[str, ...] | Any) -> bool:
    """True when ``--json`` appears on the command line (for errors before options parse)."""
    return isinstance(args, list | tuple) and "--json" in args


def end_process(code: int) -> NoReturn:
    """End the ``dvt`` process with ``code``; skip interpreter finalization when a native
    runtime with its own threads is loaded (see NATIVE_RUNTIME_MODULES).

    The controlled end does what a normal exit does first - run the ``atexit`` callbacks
    (logging, telemetry exporters) and flush stdout and stderr - and then leaves through
    ``os._exit``, so no native thread can touch a finalizing interpreter.
    """
    if not any(name in sys.modules for name in NATIVE_RUNTIME_MODULES):
        sys.exit(code)
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            # A closed pipe (dvt events | head) must not change the exit status.
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
