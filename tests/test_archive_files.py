"""Archive files without a database: layout, exact round trips, corrupt and missing data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dvt_archive.archiver import parse_age
from dvt_archive.files import (
    data_file,
    decode,
    encode,
    normalize_root,
    open_root,
    sha256,
    table_of,
)
from dvt_archive.reader import ParquetColdReader, _may_hold
from dvt_engine.archive import ColdSegment, open_cold_reader
from dvt_engine.errors import ArchiveCorrupt, UsageError

AT = datetime(2026, 3, 14, 23, 59, 59, 999_999, tzinfo=UTC)


def _row(run: str, seq: int, envelope: str, at: datetime = AT) -> tuple[object, ...]:
    return ("acme", run, seq, at, "StepStarted", f"e{seq}", f"k{seq}", "s", at, None, envelope)


def test_rows_come_back_exactly_as_written_sorted_by_run_and_seq() -> None:
    envelope = '{"b": 1,  "a":2.50, "text":"\\u0000 é"}'
    rows = [_row("r2", 1, "{}"), _row("r1", 2, envelope), _row("r1", 1, "{ }")]
    data = encode(table_of(rows))
    table = decode(data, where="x")
    assert table.column("envelope").to_pylist() == ["{ }", envelope, "{}"]
    assert table.column("persisted_at").to_pylist() == [AT, AT, AT]
    assert table.column("run_seq").to_pylist() == [1, 2, 1]
    assert sha256(data) == sha256(encode(table_of(list(reversed(rows)))))


def test_partitions_are_hive_style_by_utc_day_with_the_tenant_encoded() -> None:
    assert data_file("acme", AT, "b1") == "tenant=acme/year=2026/month=03/day=14/part-b1.parquet"
    assert data_file("a/b=c", AT + timedelta(microseconds=1), "b1").startswith(
        "tenant=a%2Fb%3Dc/year=2026/month=03/day=15/")


def test_roots_are_normalised_and_credentials_refused(tmp_path: Path) -> None:
    assert normalize_root(str(tmp_path / "x" / ".." / "y")) == f"file://{tmp_path / 'y'}"
    assert normalize_root("s3://bucket/pre/fix/") == "s3://bucket/pre/fix"
    with pytest.raises(UsageError):
        normalize_root("s3://key:secret@bucket/prefix")
    with pytest.raises(UsageError):
        normalize_root("ftp://host/x")
    with pytest.raises(UsageError):
        open_cold_reader("gopher://host/x")


def test_ages() -> None:
    assert parse_age("90d") == timedelta(days=90)
    assert parse_age("0s") == timedelta(0)
    with pytest.raises(UsageError):
        parse_age("ninety")


def test_a_file_that_is_not_parquet_or_lacks_events_is_archive_corrupt(tmp_path: Path) -> None:
    with pytest.raises(ArchiveCorrupt):
        decode(b"not parquet", where="x")
    root = open_root(str(tmp_path))
    name = data_file("acme", AT, "b1")
    root.put(name, encode(table_of([_row("r1", 1, "{}"), _row("r1", 3, "{}")])))
    reader = ParquetColdReader(str(tmp_path))
    segment = ColdSegment("acme", "r1", 1, 3, root.url, (name,))
    with pytest.raises(ArchiveCorrupt):
        reader.read_segment_sync(segment)
    assert [row[0] for row in reader.read_segment_sync(
        ColdSegment("acme", "r1", 3, 3, root.url, (name,)))] == [3]
    root.remove(name)
    with pytest.raises(ArchiveCorrupt):
        ParquetColdReader(str(tmp_path)).read_segment_sync(segment)


def test_a_run_read_decodes_only_row_groups_that_can_hold_it(tmp_path: Path) -> None:
    rows = [_row(run, seq, f'{{"n":{seq}}}') for run in ("r1", "r2", "r3")
            for seq in range(1, 6001)]
    root = open_root(str(tmp_path))
    name = data_file("acme", AT, "b1")
    root.put(name, encode(table_of(rows)))
    reader = ParquetColdReader(str(tmp_path))
    metadata = pq.ParquetFile(tmp_path / name).metadata
    assert metadata.num_row_groups == 3
    for run in ("r1", "r2", "r3"):
        segment = ColdSegment("acme", run, 1, 6000, root.url, (name,))
        by_groups = reader.read_segment_sync(segment)
        assert by_groups == reader.read_segment_sync(segment, whole_files=True)
        assert [row[2] for row in by_groups] == [f'{{"n":{seq}}}' for seq in range(1, 6001)]
    holding = [i for i in range(3) if _may_hold(metadata.row_group(i), ("acme", "r2"))]
    assert holding == [0, 1]
    assert [i for i in range(3) if _may_hold(metadata.row_group(i), ("acme", "r9"))] == []
