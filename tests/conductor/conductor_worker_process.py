"""A dvt Conductor worker host in its own process, for the fault tests.

Run: python conductor_worker_process.py STORE_URL SERVER_URL TASK_PREFIX LEASE_S [LEASE_CHECK_S]
(LEASE_CHECK_S 0 switches the worker's lease watcher off, to measure the server on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys


def _die_with_parent() -> None:
    # Linux: the worker gets SIGTERM if the test process dies without its teardown.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


async def main(store_url: str, server_url: str, prefix: str, lease_s: str,
               lease_check_s: str = "1.0") -> None:
    """Open the store and serve the prefix's task types until SIGTERM."""
    from dvt_adapters_conductor.engine import ConductorEngine
    from dvt_adapters_conductor.worker import WorkerOptions
    from dvt_statestore_pg.store import PostgresRunStateStore

    store = await PostgresRunStateStore.open(store_url)
    engine = ConductorEngine(store, server_url=server_url, worker=False, task_prefix=prefix,
                             lease_s=int(lease_s),
                             worker_options=WorkerOptions(park_s=1, operator_park_s=2,
                                                         lease_check_s=float(lease_check_s)))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await engine.serve_workers(stop)
    finally:
        await engine.close()
        await store.close()


if __name__ == "__main__":
    _die_with_parent()
    # The fault tests read the lease watcher's lines on stderr (which task it took for lost).
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("dvt.conductor.worker").setLevel(logging.INFO)
    asyncio.run(main(*sys.argv[1:6]))
    sys.stdout.flush()
    os._exit(0)
