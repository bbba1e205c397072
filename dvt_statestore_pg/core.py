"""What every part of the PostgreSQL store shares: configuration, pool, retries, row decoding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from dvt_engine.errors import DvtError, SchemaValidationFailed, StoreUnavailable, UsageError
from dvt_engine.identifiers import validate_identifier
from dvt_engine.models.events import Event
from dvt_statestore_pg.config import StoreConfig, parse_store_url
from dvt_statestore_pg.migrations import apply_migrations
from dvt_statestore_pg.notify import Notifier, channel_for
from dvt_statestore_pg.queries import Queries

_T = TypeVar("_T")
Conn = psycopg.AsyncConnection[Any]
#: A run as the store keys it: (tenantId, runId).
RunKey = tuple[str, str]
#: How long the store keeps one pooled connection for its calls before handing it back (the
#: pool's own max_lifetime then applies to it, as to every other connection).
HELD_SECONDS = 300.0
_IDLE = TransactionStatus.IDLE


def utc(value: datetime) -> datetime:
    """A database time in UTC."""
    # The driver gives UTC times on a UTC session already; converting showed in profiles.
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def store_error(exc: psycopg.Error) -> StoreUnavailable:
    """A database error that a retry will not cure, as the store's coded error."""
    return StoreUnavailable(
        f"PostgreSQL store error: {exc.diag.message_primary or exc}",
        details={"sqlstate": exc.sqlstate},
        retryable=False,
    )


def event_from_row(run_seq: int, persisted_at: datetime, envelope: str) -> Event:
    """An event read back: the stored envelope plus the store-assigned runSeq and time."""
    event = Event.model_validate_json(envelope)
    return event.model_copy(update={"run_seq": run_seq, "persisted_at": utc(persisted_at)})


def event_with_seq(envelope: str, run_seq: int) -> Event:
    """A stored envelope read back with its runSeq, validated once (no copy afterwards).

    The envelope is a JSON object stored without runSeq; the key is appended to its text, and
    a JSON parser keeps the last of repeated keys, so an older envelope's own value loses.
    """
    return Event.model_validate_json(f'{envelope[:-1].rstrip()},"runSeq":{int(run_seq)}}}')


# Identifier values found valid, so reads and appends do not check the same ids character by
# character on every call (cleared when full; the rule is the same for every identifier field).
_VALID: set[str] = set()
_VALID_MAX = 50_000


def check_identifier(name: str, value: str) -> None:
    """``validate_identifier(name, value)``, remembered for values found valid before."""
    if type(value) is str and value in _VALID:
        return
    validate_identifier(name, value)
    if type(value) is str:
        if len(_VALID) >= _VALID_MAX:
            _VALID.clear()
        _VALID.add(value)


def valid_ids(*values: str) -> bool:
    """False for an identifier no run can have: such a read finds nothing, like an unknown id."""
    try:
        for value in values:
            check_identifier("id", value)
    except DvtError:
        return False
    return True


class StoreCore:
    """The pool, the notification listener and the retry loop the store's parts share."""

    def __init__(self, url: str, **options: Any) -> None:
        config = parse_store_url(url)
        known = {k: v for k, v in options.items() if k in StoreConfig.__dataclass_fields__}
        unknown = set(options) - set(known)
        if unknown:
            raise UsageError(f"unknown PostgreSQL store options: {sorted(unknown)}")
        self.config = replace(config, **known)
        self.url = url
        self._q = Queries(self.config.schema)
        self._channel = channel_for(self.config.schema)
        self._pool: AsyncConnectionPool | None = None
        self._open_lock = asyncio.Lock()
        self._notifier: Notifier | None = None
        # One pooled connection the store keeps between calls: a call that finds it free runs
        # on it without a pool checkout (in profiles of a read by primary key, the checkout
        # and return cost as much as parsing the answer); concurrent
        # calls take pooled connections as before. Kept only with pool_max >= 2, so one
        # connection is always left in the pool.
        self._held: Conn | None = None
        self._held_busy = False
        self._held_until = 0.0
        # Calls waiting for the pool: the held connection goes back to it when one does, so a
        # call that found it busy is not starved by the calls after it (a pool of two, one
        # append blocked on a run's lock, a follower polling: the second append must get in).
        self._waiting = 0

    async def _ensure_open(self) -> AsyncConnectionPool:
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            if self._pool is not None:
                return self._pool
            pool = AsyncConnectionPool(
                self.config.conninfo,
                min_size=self.config.pool_min,
                max_size=self.config.pool_max,
                kwargs={"autocommit": True},
                open=False,
                timeout=max(self.config.timeout, 1.0),
                name=f"dvt-{self.config.schema}",
            )
            try:
                await pool.open(wait=True, timeout=max(self.config.timeout, 1.0))
                if self.config.migrate:
                    async with pool.connection() as conn:
                        await apply_migrations(conn, self.config.schema)
            except psycopg.Error as exc:
                await pool.close()
                raise StoreUnavailable(
                    f"cannot open the PostgreSQL store at {self.config.redacted()}: {exc}",
                    details={"schema": self.config.schema},
                ) from exc
            self._pool = pool
            return pool

    async def close(self) -> None:
        """Stop the listener and close every connection."""
        if self._notifier is not None:
            await self._notifier.close()
            self._notifier = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            held, self._held = self._held, None
            if held is not None and not self._held_busy:
                await pool.putconn(held)
            await pool.close()

    def _notifier_for(self) -> Notifier:
        if self._notifier is None:
            self._notifier = Notifier(self.config.conninfo, self._channel)
        return self._notifier

    async def _run(self, work: Callable[[Conn], Awaitable[_T]]) -> _T:
        """Run ``work`` on a pooled connection, retrying through lost connections.

        Every operation routed here is idempotent (reads, and appends keyed by idempotency
        key), so running it again after a connection died mid-way is safe.
        """
        pool = self._pool or await self._ensure_open()
        deadline = time.monotonic() + self.config.timeout
        delay = 0.05
        while True:
            try:
                held = self._held
                if held is not None and not self._held_busy:
                    self._held_busy = True
                    try:
                        return await work(held)
                    finally:
                        self._held_busy = False
                        if (self._waiting or held.pgconn.transaction_status != _IDLE
                                or self._held is not held
                                or time.monotonic() > self._held_until):
                            await self._hand_back(pool, held)
                self._waiting += 1
                try:
                    conn = await pool.getconn()
                finally:
                    self._waiting -= 1
                try:
                    result = await work(conn)
                except BaseException:
                    await pool.putconn(conn)  # the pool rolls back or replaces it
                    raise
                await self._keep_or_return(pool, conn)
                return result
            except psycopg.OperationalError as exc:
                if time.monotonic() + delay >= deadline:
                    raise StoreUnavailable(
                        f"PostgreSQL store unavailable: {exc}",
                        details={"schema": self.config.schema},
                    ) from exc
                await pool.check()
                await asyncio.sleep(delay)  # back-off before reconnecting
                delay = min(delay * 2, 1.0)
            except psycopg.DataError as exc:
                raise SchemaValidationFailed(
                    f"PostgreSQL refused a value: {exc.diag.message_primary or exc}",
                    details={"sqlstate": exc.sqlstate},
                ) from exc
            except psycopg.Error as exc:
                raise store_error(exc) from exc

    async def _keep_or_return(self, pool: AsyncConnectionPool, conn: Conn) -> None:
        """Keep a connection a call left idle as the held one if none is, else return it."""
        if (self._held is None and not self._waiting and self._pool is pool
                and self.config.pool_max >= 2 and conn.pgconn.transaction_status == _IDLE):
            self._held = conn
            self._held_until = time.monotonic() + HELD_SECONDS
        else:
            await pool.putconn(conn)

    async def _hand_back(self, pool: AsyncConnectionPool, conn: Conn) -> None:
        """Return the held connection to its pool (which checks, resets or replaces it)."""
        if self._held is conn:
            self._held = None
        await pool.putconn(conn)
