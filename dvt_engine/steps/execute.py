"""Running a handler under a cancellation token and a timeout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from dvt_engine.errors import StepCancelled, StepTimeout
from dvt_engine.ports import StepResult
from dvt_engine.steps.context import CancelToken
from dvt_engine.steps.registry import as_step_result
from dvt_engine.waiting import cancel_and_wait

logger = logging.getLogger("dvt.steps")


class TokenCancelled(Exception):
    """The CancelToken fired while the handler ran."""


DEFAULT_STOP_GRACE_S = 10.0


async def call_handler(
    work_coro: Awaitable[Any],
    token: CancelToken,
    timeout_ms: int | None,
    *,
    stop_grace_s: float = DEFAULT_STOP_GRACE_S,
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
        await stop_task(work, stop_grace_s)
        raise
    finally:
        await cancel_and_wait(stop)
    if work in done:
        if work.cancelled():
            raise StepCancelled("the handler was cancelled")
        return as_step_result(work.result())
    await stop_task(work, stop_grace_s)
    if stop in done:
        raise TokenCancelled
    raise StepTimeout(
        f"step ran longer than its timeout of {timeout_ms} ms", details={"timeoutMs": timeout_ms}
    )


async def stop_task(work: asyncio.Future[Any], grace_s: float) -> None:
    """Cancel the handler's task and wait, at most ``grace_s``, until it has unwound.

    A handler that ignores cancellation is abandoned after the grace period rather than
    holding the attempt (and the engine's worker slot) forever; it can no longer write events.
    """
    work.add_done_callback(_consume)
    work.cancel()
    done, _ = await asyncio.wait({work}, timeout=max(0.0, grace_s))
    if not done:
        logger.warning("a step handler ignored cancellation for %.1f s and was abandoned", grace_s)


def _consume(future: asyncio.Future[Any]) -> None:
    # Retrieve the outcome of a stopped handler so asyncio does not report it as never retrieved.
    if not future.cancelled():
        future.exception()
