"""A store of its own small pool on the run store's URL and schema (API keys, admission).

Such stores keep the run store's modules untouched; migrations are applied by whichever opens
first (they are idempotent and serialised by an advisory lock).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from dvt_engine.errors import StoreUnavailable
from dvt_statestore_pg.config import parse_store_url
from dvt_statestore_pg.migrations import apply_migrations

_T = TypeVar("_T")
Conn = psycopg.AsyncConnection[Any]


class SideStore:
    """Opens its pool on first use, migrates the schema, and turns driver errors into codes."""

    #: What the store holds, in its pool's name and its errors ("access", "admission").
    purpose: ClassVar[str]

    def __init__(self, url: str, *, pool_max: int = 4) -> None:
        self.config = parse_store_url(url)
        self._schema = sql.Identifier(self.config.schema)
        self._pool: AsyncConnectionPool | None = None
        self._pool_max = pool_max
        self._open_lock = asyncio.Lock()

    async def _ensure_open(self) -> AsyncConnectionPool:
        async with self._open_lock:
            if self._pool is not None:
                return self._pool
            pool = AsyncConnectionPool(self.config.conninfo, min_size=1, max_size=self._pool_max,
                                       kwargs={"autocommit": True}, open=False,
                                       timeout=max(self.config.timeout, 1.0),
                                       name=f"dvt-{self.purpose}-{self.config.schema}")
            try:
                await pool.open(wait=True, timeout=max(self.config.timeout, 1.0))
                async with pool.connection() as conn:
                    await apply_migrations(conn, self.config.schema)
            except psycopg.Error as exc:
                await pool.close()
                raise StoreUnavailable(
                    f"cannot open the PostgreSQL {self.purpose} store at "
                    f"{self.config.redacted()}",
                    details={"sqlstate": getattr(exc, "sqlstate", None)}) from exc
            self._pool = pool
            return pool

    async def close(self) -> None:
        """Close every connection."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _run(self, work: Callable[[Conn], Awaitable[_T]]) -> _T:
        pool = await self._ensure_open()
        try:
            async with pool.connection() as conn:
                return await work(conn)
        except psycopg.Error as exc:
            # The message may quote SQL or values: callers get the code and the sqlstate only.
            raise StoreUnavailable(f"PostgreSQL {self.purpose} store error",
                                   details={"sqlstate": exc.sqlstate}) from exc
