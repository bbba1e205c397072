"""Loops that wait on an event between rounds stop when cancelled, whatever the timing."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import pytest

from dvt_engine.admission import Dispatcher
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_admission import MemoryAdmissionStore
from dvt_engine.waiting import settles_within

# The yields between setting the event and cancelling cover every point of the race: before the
# waiter wakes, after the inner wait finished, after the waiter was released.
YIELDS = range(8)


async def _yield(times: int) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def test_settles_within_says_whether_the_wait_finished_in_time() -> None:
    event = asyncio.Event()
    assert await settles_within(event.wait(), 0.01) is False
    event.set()
    assert await settles_within(event.wait(), 0.01) is True
    assert await settles_within(event.wait(), None) is True


async def _stops_when_cancelled(wait: Callable[[asyncio.Event], Awaitable[object]],
                                yields: int) -> bool:
    """Whether a wait-clear-wait loop ends when cancelled ``yields`` steps after a wake."""
    event = asyncio.Event()

    async def loop() -> None:
        while True:
            event.clear()
            await wait(event)

    task = asyncio.create_task(loop())
    await _yield(3)
    event.set()
    await _yield(yields)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    if not done:
        task.cancel()  # once more, so the test leaves nothing running
        await asyncio.wait({task}, timeout=2)
    return bool(done) and task.cancelled()


@pytest.mark.parametrize("yields", YIELDS)
async def test_a_cancel_racing_the_wake_up_always_stops_the_loop(yields: int) -> None:
    assert await _stops_when_cancelled(lambda e: settles_within(e.wait(), 30), yields)


async def test_wait_for_loses_the_cancel_on_python_3_11_only() -> None:
    """The reason settles_within exists: on Python 3.11 wait_for loses a cancel in the race;
    from 3.12 on it is built on asyncio.timeout and stops in every interleaving."""
    outcomes = [await _stops_when_cancelled(lambda e: asyncio.wait_for(e.wait(), 30), y)
                for y in YIELDS]
    assert all(outcomes) is (sys.version_info >= (3, 12)), outcomes


@pytest.mark.parametrize("yields", YIELDS)
async def test_the_admission_dispatcher_stops_when_told_to_just_after_a_wake(yields: int) -> None:
    store = MemoryRunStateStore()
    engine = ReferenceEngine(store)
    dispatcher = Dispatcher(MemoryAdmissionStore(store), engine, idle_s=30)
    dispatcher.start()
    await _yield(5)
    dispatcher.wake()
    await _yield(yields)
    stopping = asyncio.create_task(dispatcher.stop())
    # Waited on from outside: a stop() that swallowed a cancel would hide a hang from a timeout.
    done, _ = await asyncio.wait({stopping}, timeout=5)
    assert stopping in done, "the dispatch loop went on after it was cancelled"
    await engine.close()
