"""The Parquet implementation of the cold tier port (``dvt.cold_stores``: file, s3)."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dvt_archive.files import ColdRoot, decode, open_root
from dvt_engine.archive import ColdEventReader, ColdRow, ColdSegment
from dvt_engine.errors import ArchiveCorrupt, ArchiveUnavailable

#: Whole decoded files kept per reader, for a rebuild: it reads a file's runs one after
#: another, so the file in use (and one more) is all it needs.
CACHED_FILES = 2
INDEX_COLUMNS = ("tenant_id", "run_id", "run_seq", "persisted_at", "envelope")

RunIndex = dict[tuple[str, str], list[ColdRow]]
#: What a rebuild reads of a file: each run's (runSeq, envelope) pairs, in runSeq order.
LOG_COLUMNS = ("tenant_id", "run_id", "run_seq", "envelope")
LogRow = tuple[int, str]
LogIndex = dict[tuple[str, str], list[LogRow]]


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


def index_logs(table: pa.Table) -> LogIndex:
    """A file's (runSeq, envelope) pairs grouped by (tenant, run), each in runSeq order.

    Only the four columns a rebuild folds: converting every row's persistedAt into a Python
    datetime was most of the time of ``index_rows`` on a whole file.
    """
    index: LogIndex = {}
    columns = (table.column(name).to_pylist() for name in LOG_COLUMNS)
    for tenant, run, seq, envelope in zip(*columns, strict=True):
        index.setdefault((tenant, run), []).append((seq, envelope))
    return index


def _check_segment(segment: ColdSegment, seqs: list[int]) -> None:
    """ARCHIVE_CORRUPT unless ``seqs`` (sorted) are exactly the segment's runSeq range."""
    if seqs != list(range(segment.first_seq, segment.last_seq + 1)):
        raise ArchiveCorrupt(
            "archive files lack events the registry says they hold",
            details={"runId": segment.run_id, "firstSeq": segment.first_seq,
                     "lastSeq": segment.last_seq, "found": len(seqs)},
        )


class ParquetColdReader(ColdEventReader):
    """Reads segments from Parquet files under a directory or an S3 prefix.

    A run's read opens the file, reads its footer and decodes only the row groups whose
    statistics can hold the run (files are sorted by tenant and run): a few ranged reads on
    S3, a few thousand rows decoded. A rebuild reads whole files instead (``read_log_sync``),
    each once, keeping the last few decoded.
    """

    def __init__(self, root_url: str, **options: Any) -> None:
        self._root: ColdRoot = open_root(root_url, **options)
        self.root_url = self._root.url
        self._files: OrderedDict[tuple[str, bool], Any] = OrderedDict()
        self._lock = threading.Lock()

    async def read_segment(self, segment: ColdSegment) -> list[ColdRow]:
        """The segment's rows, runSeq order; ARCHIVE_CORRUPT when its files lack any."""
        return await asyncio.to_thread(self.read_segment_sync, segment)

    def read_segment_sync(self, segment: ColdSegment, *, whole_files: bool = False
                          ) -> list[ColdRow]:
        """``read_segment`` for callers already off the event loop."""
        key = (segment.tenant_id, segment.run_id)
        rows: list[ColdRow] = []
        for name in segment.files:
            found = (self.file_index(name).get(key, ()) if whole_files
                     else self._run_rows(name, key))
            rows += [row for row in found if segment.first_seq <= row[0] <= segment.last_seq]
        rows.sort(key=lambda row: row[0])
        _check_segment(segment, [row[0] for row in rows])
        return rows

    def read_log_sync(self, segment: ColdSegment) -> list[LogRow]:
        """A segment's (runSeq, envelope) pairs from whole files, for a rebuild (the last few
        files kept decoded); ARCHIVE_CORRUPT when its files lack any."""
        key = (segment.tenant_id, segment.run_id)
        rows: list[LogRow] = []
        for name in segment.files:
            rows += [row for row in self._cached(name, logs=True).get(key, ())
                     if segment.first_seq <= row[0] <= segment.last_seq]
        rows.sort(key=lambda row: row[0])
        _check_segment(segment, [row[0] for row in rows])
        return rows

    def _run_rows(self, name: str, key: tuple[str, str]) -> list[ColdRow]:
        try:
            with self._root.open(name) as handle:
                parquet = pq.ParquetFile(handle)
                groups = [i for i in range(parquet.num_row_groups)
                          if _may_hold(parquet.metadata.row_group(i), key)]
                table = parquet.read_row_groups(groups, columns=list(INDEX_COLUMNS))
            # Filtered in Arrow: only the run's rows become Python objects.
            table = table.filter(pc.and_(pc.equal(table.column("tenant_id"), key[0]),
                                         pc.equal(table.column("run_id"), key[1])))
        except (pa.ArrowException, ValueError) as exc:
            raise ArchiveCorrupt("an archive file is not readable Parquet",
                                 details={"file": name}) from exc
        except OSError as exc:
            raise ArchiveUnavailable(f"the archive at {self.root_url} cannot be read",
                                     details={"file": name}) from exc
        return index_rows(table).get(key, [])

    def file_index(self, name: str) -> RunIndex:
        """A whole file decoded and grouped by run (the last few kept)."""
        index: RunIndex = self._cached(name, logs=False)
        return index

    def _cached(self, name: str, *, logs: bool) -> Any:
        """A whole file's ``index_logs`` (or ``index_rows``), decoded once while it is kept."""
        key = (name, logs)
        with self._lock:
            cached = self._files.get(key)
            if cached is not None:
                self._files.move_to_end(key)
                return cached
        data = self._root.get(name)
        index = (index_logs(decode(data, where=name, columns=LOG_COLUMNS)) if logs
                 else index_rows(decode(data, where=name)))
        with self._lock:
            self._files[key] = index
            while len(self._files) > CACHED_FILES:
                self._files.popitem(last=False)
        return index


def _may_hold(group: Any, key: tuple[str, str]) -> bool:
    """Whether a row group's statistics allow rows of the run (True when they say nothing)."""
    bounds = {}
    for i in range(group.num_columns):
        column = group.column(i)
        if column.path_in_schema in ("tenant_id", "run_id"):
            stats = column.statistics
            if stats is None or not stats.has_min_max:
                return True
            bounds[column.path_in_schema] = (stats.min, stats.max)
    if len(bounds) < 2:
        return True
    (t_min, t_max), (r_min, r_max) = bounds["tenant_id"], bounds["run_id"]
    tenant, run = key
    if not t_min <= tenant <= t_max:
        return False
    # Run ids are ordered within a tenant only: the run bounds hold when the group has one.
    return bool(t_min != t_max or r_min <= run <= r_max)
