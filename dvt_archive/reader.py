"""The Parquet implementation of the cold tier port (``dvt.cold_stores``: file, s3)."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import Any

import pyarrow as pa

from dvt_archive.files import ColdRoot, decode, open_root
from dvt_engine.archive import ColdEventReader, ColdRow, ColdSegment
from dvt_engine.errors import ArchiveCorrupt

#: Decoded files kept per reader: a run's segment and its neighbours in one batch file are
#: read together by a rebuild or a listing, one file decode for all of them.
CACHED_FILES = 8

RunIndex = dict[tuple[str, str], list[ColdRow]]


def index_rows(table: pa.Table) -> RunIndex:
    """A file's rows grouped by (tenant, run), each list in runSeq order (files are sorted)."""
    index: RunIndex = {}
    tenants = table.column("tenant_id").to_pylist()
    runs = table.column("run_id").to_pylist()
    seqs = table.column("run_seq").to_pylist()
    times = table.column("persisted_at").to_pylist()
    envelopes = table.column("envelope").to_pylist()
    for tenant, run, seq, at, envelope in zip(tenants, runs, seqs, times, envelopes,
                                               strict=True):
        index.setdefault((tenant, run), []).append((seq, at, envelope))
    return index


class ParquetColdReader(ColdEventReader):
    """Reads segments from Parquet files under a directory or an S3 prefix."""

    def __init__(self, root_url: str, **options: Any) -> None:
        self._root: ColdRoot = open_root(root_url, **options)
        self.root_url = self._root.url
        self._files: OrderedDict[str, RunIndex] = OrderedDict()
        self._lock = threading.Lock()

    async def read_segment(self, segment: ColdSegment) -> list[ColdRow]:
        """The segment's rows, runSeq order; ARCHIVE_CORRUPT when its files lack any."""
        return await asyncio.to_thread(self.read_segment_sync, segment)

    def read_segment_sync(self, segment: ColdSegment) -> list[ColdRow]:
        """``read_segment`` for callers already off the event loop."""
        key = (segment.tenant_id, segment.run_id)
        rows = [row for name in segment.files for row in self._index(name).get(key, ())
                if segment.first_seq <= row[0] <= segment.last_seq]
        rows.sort(key=lambda row: row[0])
        expected = list(range(segment.first_seq, segment.last_seq + 1))
        if [row[0] for row in rows] != expected:
            raise ArchiveCorrupt(
                "archive files lack events the registry says they hold",
                details={"runId": segment.run_id, "firstSeq": segment.first_seq,
                         "lastSeq": segment.last_seq, "found": len(rows)},
            )
        return rows

    def _index(self, name: str) -> RunIndex:
        with self._lock:
            cached = self._files.get(name)
            if cached is not None:
                self._files.move_to_end(name)
                return cached
        index = index_rows(decode(self._root.get(name), where=name))
        with self._lock:
            self._files[name] = index
            while len(self._files) > CACHED_FILES:
                self._files.popitem(last=False)
        return index
