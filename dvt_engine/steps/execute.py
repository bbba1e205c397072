"""Running a handler under a cancellation token and a timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from dvt_engine.errors import StepCancelled, StepTimeout
from dvt_engine.ports import StepResult
from dvt_engine.steps.context import CancelToken
from dvt_engine.steps.registry import as_step_result


class TokenCancelled(Exception):
    """The CancelToken fired while the handler ran."""


async def call_handler(
    work_coro: Awaitable[Any], token: CancelToken, timeout_ms: int | None
) -> StepResult:
    """Run the handler until it ends, the token fires, or the timeout passes."""
    work: asyncio.Future[Any] = asyncio.ensure_future(work_coro)
    stop = asyncio.ensure_future(token.wait())
    try:
        done, _ = await asyncio.wait(
            {work, stop},
            timeout=None if timeout_ms is None else timeout_ms / 1000.0,
            return_when=asyncio.FIRST_COMPLETED,
        )
    except asyncio.CancelledError:
        await stop_task(work)
        raise
    finally:
        stop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stop
    if work in done:
        if work.cancelled():
            raise StepCancelled("the handler was cancelled")
        return as_step_result(work.result())
    await stop_task(work)
    if stop in done:
        raise TokenCancelled
    raise StepTimeout(
        f"step ran longer than its timeout of {timeout_ms} ms", details={"timeoutMs": timeout_ms}
    )


async def stop_task(work: asyncio.Future[Any]) -> None:
    """Cancel the handler's task and wait until it has unwound."""
    work.cancel()
    try:
        await work
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # our own task is being cancelled too: never swallow that
    except Exception:
        pass  # the handler's own failure while unwinding changes nothing: it was stopped
