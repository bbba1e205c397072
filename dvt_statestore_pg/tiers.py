"""Reads across tiers: a run's events from the cold archive (migration 0008) and the hot log.

``dvt archive`` moves the events of finished, idle runs to Parquet files and records each
move as a segment (runSeq range, files) in dvt_archived_runs, in the transaction that deletes
them from dvt_events. A run's read here gives the segments' rows, then the hot rows after them,
as the same events (byte for byte) the hot log gave before the move.

The hot path pays nothing: a read whose hot rows start right after the caller's runSeq needs
no cold rows, and only a read that finds a gap (or nothing) asks the registry.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from dvt_engine.archive import ColdEventReader, ColdSegment, open_cold_reader
from dvt_engine.models.events import Event
from dvt_statestore_pg.core import Conn, event_from_row, valid_ids
from dvt_statestore_pg.follow import Follower


class ColdTier(Follower):
    """fetch_events across tiers, and the cold part of a run's whole log for project()."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._cold_readers: dict[str, ColdEventReader] = {}

    def attach_cold_reader(self, reader: ColdEventReader) -> None:
        """Read the archive under ``reader.root_url`` with this reader (its own credentials).

        Without one, a reader is opened from the root URL the registry holds, with the
        environment's settings (DVT_ARCHIVE_*, or the standard AWS chain for S3).
        """
        self._cold_readers[reader.root_url] = reader

    async def fetch_events(
        self, tenant_id: str, run_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        """Events of a run with runSeq > after_seq, ascending, from both tiers."""
        hot = await super().fetch_events(tenant_id, run_id, after_seq=after_seq, limit=limit)
        if (hot and hot[0].run_seq == after_seq + 1) or (limit is not None and limit <= 0):
            return hot
        if not valid_ids(tenant_id, run_id):
            return hot
        cold = await self.cold_events(tenant_id, run_id, after_seq=after_seq)
        if not cold:
            return hot
        boundary = cold[-1].run_seq or 0
        # The hot rows are the ones right after the cold ones (archiving deleted the others),
        # so the two together are a prefix of the log.
        merged = cold + [event for event in hot if (event.run_seq or 0) > boundary]
        return merged if limit is None else merged[:limit]

    async def archived_segments(self, tenant_id: str, run_id: str) -> list[ColdSegment]:
        """The run's segments in the cold tier, in runSeq order (none for a hot run)."""
        if not valid_ids(tenant_id, run_id):
            return []
        query = segments_query(self.config.schema)

        async def work(conn: Conn) -> list[ColdSegment]:
            cur = await conn.execute(query, {"tenants": [tenant_id], "runs": [run_id]})
            return [segment_from_row(row) for row in await cur.fetchall()]

        return await self._run(work)

    async def cold_events(self, tenant_id: str, run_id: str, *, after_seq: int = 0
                          ) -> list[Event]:
        """The run's archived events with runSeq > after_seq, in runSeq order."""
        events: list[Event] = []
        for segment in await self.archived_segments(tenant_id, run_id):
            if segment.last_seq <= after_seq:
                continue
            rows = await self.cold_reader(segment.root_url).read_segment(segment)
            events += [event_from_row(*row) for row in rows if row[0] > after_seq]
        return events

    async def whole_log(self, tenant_id: str, run_id: str, hot: list[Event]) -> list[Event]:
        """A run's whole log: its archived events, then the hot ones after them."""
        cold = await self.cold_events(tenant_id, run_id)
        if not cold:
            return hot
        boundary = cold[-1].run_seq or 0
        return cold + [event for event in hot if (event.run_seq or 0) > boundary]

    def cold_reader(self, root_url: str) -> ColdEventReader:
        """The attached reader of a root, or one opened from the environment's settings."""
        reader = self._cold_readers.get(root_url)
        if reader is None:
            reader = self._cold_readers[root_url] = open_cold_reader(root_url)
        return reader

    async def close(self) -> None:
        """Close the cold readers, then the store."""
        readers, self._cold_readers = list(self._cold_readers.values()), {}
        for reader in readers:
            await reader.close()
        await super().close()


def segments_query(schema: str) -> str:
    """Segments of several runs (parallel arrays ``tenants``, ``runs``), runSeq order."""
    return sql.SQL(
        "SELECT a.tenant_id, a.run_id, a.first_seq, a.last_seq, b.root_url, a.files"
        " FROM {archived} a JOIN {batches} b ON b.batch_id = a.batch_id"
        " JOIN unnest(%(tenants)s::text[], %(runs)s::text[]) AS u(tenant_id, run_id)"
        "   ON a.tenant_id = u.tenant_id AND a.run_id = u.run_id"
        " WHERE b.state = 'committed'"
        " ORDER BY a.tenant_id, a.run_id, a.first_seq"
    ).format(archived=sql.Identifier(schema, "dvt_archived_runs"),
             batches=sql.Identifier(schema, "dvt_archive_batches")).as_string(None)


def segment_from_row(row: tuple[Any, ...]) -> ColdSegment:
    """A registry row as a segment."""
    tenant, run, first, last, root, files = row
    return ColdSegment(tenant, run, int(first), int(last), root, tuple(files))
