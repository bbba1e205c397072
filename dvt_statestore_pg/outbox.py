"""The outbox: events bound for external consumers, leased with SKIP LOCKED, acknowledged once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dvt_engine.models.events import Event
from dvt_statestore_pg.core import Conn, StoreCore, event_from_row


@dataclass(frozen=True)
class OutboxItem:
    """One outbox row leased to a consumer, with its event."""

    id: int
    event: Event


class Outbox(StoreCore):
    """claim_outbox and ack_outbox; the rows are written by the append function."""

    async def claim_outbox(self, limit: int = 100, lease_seconds: float = 30.0) -> list[OutboxItem]:
        """Lease up to ``limit`` undelivered outbox events, oldest first."""

        async def work(conn: Conn) -> list[OutboxItem]:
            cur = await conn.execute(self._q.claim_outbox, (limit, lease_seconds))
            leased = sorted(await cur.fetchall())
            items = []
            for outbox_id, tenant_id, run_id, run_seq in leased:
                cur = await conn.execute(self._q.event_at, (tenant_id, run_id, run_seq))
                row = await cur.fetchone()
                assert row is not None  # the foreign key guarantees it
                items.append(OutboxItem(int(outbox_id), event_from_row(*row)))
            return items

        return await self._run(work)

    async def ack_outbox(self, ids: Sequence[int]) -> None:
        """Acknowledge leased outbox rows: they are deleted, never handed out again.

        Keeping delivered rows would grow the table by one row per event forever; the event
        log itself is the record of what was sent.
        """

        async def work(conn: Conn) -> None:
            await conn.execute(self._q.ack_outbox, (list(ids),))

        await self._run(work)
