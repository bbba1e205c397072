"""Single appends to one run that arrive while another is being written share the next call.

Writers of one run are serialised (the run's lock), so under contention each waits for the
commit before it. Here the appends queued behind a write go to the database together, in one
call of the append function: one lock, one commit, one result per caller. A caller's answer is
the one it would have had alone: its own runSeq, duplicate for a key already stored (or sent by
an earlier caller), IDEMPOTENCY_CONFLICT for its own event only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dvt_engine.errors import IdempotencyConflict
from dvt_engine.models.events import AppendResult, Event

RunKey = tuple[str, str]
Write = Callable[[RunKey, list[Event]], Awaitable[dict[str, AppendResult]]]
Item = tuple[Event, "asyncio.Future[AppendResult]"]

# At most this many appends in one call: a bounded wait for the last of them.
_MAX_FOLD = 64


class AppendFolder:
    """Per run: the caller that finds it idle writes; callers behind it queue for one call."""

    def __init__(self, write: Write) -> None:
        self._write = write
        self._queues: dict[RunKey, list[Item]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def append(self, run: RunKey, event: Event) -> AppendResult:
        """Write ``event`` now, or, while its run is being written, queue it for the next call."""
        queue = self._queues.get(run)
        if queue is not None:
            future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
            queue.append((event, future))
            return await future
        queue = self._queues[run] = []
        try:
            results = await self._write(run, [event])  # alone: no task, no wait
        finally:
            if queue:
                # A task of its own drains what queued meanwhile, so a caller that is
                # cancelled never strands the others.
                task = asyncio.create_task(self._drain(run, queue))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                del self._queues[run]
        return results[event.idempotency_key]

    async def _drain(self, run: RunKey, queue: list[Item]) -> None:
        try:
            while queue:
                await self._write_some(run, _take(queue))
        finally:
            # No await since the loop saw the queue empty: nothing can have been added.
            if self._queues.get(run) is queue:
                del self._queues[run]
            for _, future in queue:  # only after an unexpected error
                if not future.done():
                    future.set_exception(RuntimeError("the run's writer stopped"))

    async def _write_some(self, run: RunKey, items: list[Item]) -> None:
        while items:
            try:
                results = await self._write(run, [event for event, _ in items])
            except IdempotencyConflict as exc:
                # Raised before anything was written; it names the one key it refuses (keys in
                # one call are distinct), and the others go again without it.
                key = exc.details.get("idempotencyKey")
                refused = [it for it in items if it[0].idempotency_key == key]
                if not refused:
                    _fail(items, exc)
                    return
                _fail(refused, exc)
                items = [it for it in items if it[0].idempotency_key != key]
                continue
            except Exception as exc:
                _fail(items, exc)
                return
            for event, future in items:
                if not future.done():
                    future.set_result(results[event.idempotency_key])
            return


def _take(queue: list[Item]) -> list[Item]:
    """The next call's items: queue order, each idempotency key once (a repeat waits a turn)."""
    taken: list[Item] = []
    keys: set[str] = set()
    rest: list[Item] = []
    for item in queue:
        key = item[0].idempotency_key
        if key in keys or len(taken) >= _MAX_FOLD:
            rest.append(item)
        else:
            keys.add(key)
            taken.append(item)
    queue[:] = rest
    return taken


def _fail(items: list[Item], exc: BaseException) -> None:
    for _, future in items:
        if not future.done():
            future.set_exception(exc)
