"""Wake-ups for followers through LISTEN/NOTIFY, with polling when the listener is down.

A notification only says "run R of tenant T has new events". Followers always read the log
from their own watermark, so a notification lost with a dropped connection delays delivery
until the next poll but can never lose an event or reorder one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

_log = logging.getLogger(__name__)


def channel_for(schema: str) -> str:
    """The notification channel of one schema (channels are per database, schemas are not)."""
    return "dvt_events_" + hashlib.sha256(schema.encode()).hexdigest()[:16]


@dataclass(eq=False)
class Waiter:
    """One follower's doorbell: set by a matching notification or by a reconnect
    (``tenant_id`` None: every tenant's notifications, e.g. the webhook outbox reader)."""

    tenant_id: str | None
    run_id: str | None
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Notifier:
    """One LISTEN connection per store, shared by every follower of that store."""

    def __init__(self, conninfo: str, channel: str, *, reconnect_delay: float = 0.5) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._reconnect_delay = reconnect_delay
        self._waiters: set[Waiter] = set()
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._closed = False

    @property
    def listening(self) -> bool:
        """True while notifications arrive; followers poll more often when it is False."""
        return self._listening.is_set()

    def ensure_started(self) -> None:
        """Start the listener task on first use."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dvt-pg-listen")

    async def wait_listening(self, timeout: float) -> bool:
        """Wait (bounded) until the listener is connected; True when it is."""
        self.ensure_started()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._listening.wait()
        return self.listening

    @contextlib.contextmanager
    def subscribe(self, tenant_id: str | None, run_id: str | None) -> Iterator[Waiter]:
        """Register a waiter for the duration of a ``with`` block."""
        self.ensure_started()
        waiter = Waiter(tenant_id, run_id)
        self._waiters.add(waiter)
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)

    def _wake(self, tenant_id: str | None, run_id: str | None) -> None:
        for waiter in list(self._waiters):
            if tenant_id is None or waiter.tenant_id is None or (
                waiter.tenant_id == tenant_id and waiter.run_id in (None, run_id)
            ):
                waiter.event.set()

    async def _run(self) -> None:
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.Error as exc:
                _log.debug("listener cannot connect: %s", exc)
                await asyncio.sleep(self._reconnect_delay)  # back-off between reconnects
                continue
            try:
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._listening.set()
                    # Whatever was appended while we were not listening is found by a read.
                    self._wake(None, None)
                    async for note in conn.notifies():
                        tenant_id, _, rest = note.payload.partition("|")
                        run_id, _, _seq = rest.partition("|")
                        self._wake(tenant_id, run_id)
            except psycopg.Error as exc:
                _log.debug("listener connection lost: %s", exc)
            finally:
                self._listening.clear()
                self._wake(None, None)
            if not self._closed:
                await asyncio.sleep(self._reconnect_delay)  # back-off between reconnects

    async def close(self) -> None:
        """Stop listening and wake every follower."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._wake(None, None)
