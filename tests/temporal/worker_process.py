"""A dvt Temporal worker in its own process, for the fault tests.

Run: python worker_process.py STORE_URL ADDRESS TASK_QUEUE
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys


def _die_with_parent() -> None:
    # Linux: the worker gets SIGTERM if the test process dies without its teardown.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


async def main(store_url: str, address: str, queue: str) -> None:
    """Open the store and serve until SIGTERM."""
    from dvt_adapters_temporal.engine import run_worker
    from dvt_statestore_pg.store import PostgresRunStateStore

    store = await PostgresRunStateStore.open(store_url)
    try:
        await run_worker(store, address=address, task_queue=queue, heartbeat_timeout_s=2.0)
    finally:
        await store.close()


if __name__ == "__main__":
    _die_with_parent()
    asyncio.run(main(*sys.argv[1:4]))
    sys.stdout.flush()
    os._exit(0)
