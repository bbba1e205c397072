"""``dvt store rebuild --from-cold``: snapshots recomputed from Parquet files and the hot log."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from pydantic_core import from_json

from dvt_archive.reader import ParquetColdReader
from dvt_engine.archive import ColdSegment
from dvt_engine.stored_events import StoredEvent
from dvt_statestore_pg import admin
from dvt_statestore_pg.config import parse_store_url
from dvt_statestore_pg.tiers import segment_from_row, segments_query


class ColdLoader:
    """Reads the archived events of a page of runs, each batch file decoded once per page."""

    def __init__(self, schema: str, **cold_options: Any) -> None:
        self._query = segments_query(schema)
        self._options = cold_options
        self._readers: dict[str, ParquetColdReader] = {}

    def reader(self, root_url: str) -> ParquetColdReader:
        """The reader of one cold root (opened once)."""
        if root_url not in self._readers:
            self._readers[root_url] = ParquetColdReader(root_url, **self._options)
        return self._readers[root_url]

    async def __call__(self, conn: psycopg.AsyncConnection[Any],
                       keys: list[tuple[str, str]]) -> dict[tuple[str, str], list[StoredEvent]]:
        """Each run's cold events in runSeq order."""
        cur = await conn.execute(self._query, {"tenants": [k[0] for k in keys],
                                               "runs": [k[1] for k in keys]})
        segments = [segment_from_row(row) for row in await cur.fetchall()]
        return await asyncio.to_thread(self._read, segments)

    def _read(self, segments: list[ColdSegment]) -> dict[tuple[str, str], list[StoredEvent]]:
        found: dict[tuple[str, str], list[StoredEvent]] = {}
        # Files in order, so the readers' cache holds each file while its runs are read.
        for segment in sorted(segments, key=lambda s: (s.files, s.tenant_id, s.run_id,
                                                        s.first_seq)):
            rows = self.reader(segment.root_url).read_log_sync(segment)
            # Archived envelopes are the hot ones, validated when written: read as records,
            # a segment's envelopes parsed as one JSON array.
            envelopes = from_json("[" + ",".join(envelope for _, envelope in rows) + "]")
            found.setdefault((segment.tenant_id, segment.run_id), []).extend(
                StoredEvent(envelope, seq)
                for (seq, _), envelope in zip(rows, envelopes, strict=True))
        for events in found.values():
            events.sort(key=lambda e: e.run_seq or 0)
        return found


async def rebuild_from_cold(url: str, *, tenant_id: str | None = None,
                            **cold_options: Any) -> admin.RebuildReport:
    """Recompute every stored snapshot from its whole log, archived events included."""
    loader = ColdLoader(parse_store_url(url).schema, **cold_options)
    return await admin.rebuild(url, tenant_id=tenant_id, cold=loader)
