"""Archive files: Parquet (zstd) under Hive-style partitions on a local directory or S3.

Layout under the cold root::

    tenant=<tenant>/year=YYYY/month=MM/day=DD/part-<batch>.parquet   the events
    _manifests/<batch>.json                                           rows and sha256 per file

The day is the UTC day each event was persisted, so a period's events are in the period's
directories. Rows are sorted by (run, runSeq) and written in row groups small enough that a
reader of one run skips most of a file by the row groups' statistics. The envelope is kept as
the exact text the store held, so a read back gives byte-identical events.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from dvt_engine.errors import ArchiveCorrupt, ArchiveUnavailable, UsageError

SCHEMA = pa.schema([
    ("tenant_id", pa.string()),
    ("run_id", pa.string()),
    ("run_seq", pa.int64()),
    ("persisted_at", pa.timestamp("us", tz="UTC")),
    ("event_type", pa.string()),
    ("event_id", pa.string()),
    ("idempotency_key", pa.string()),
    ("step_id", pa.string()),
    ("emitted_at", pa.timestamp("us", tz="UTC")),
    ("content_hash", pa.string()),
    ("envelope", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)
#: Rows per row group: a reader of one run decodes about this many rows of a file.
ROW_GROUP_ROWS = 8192
COMPRESSION = "zstd"
MANIFESTS = "_manifests"

#: One event row in SCHEMA's column order.
Row = tuple[Any, ...]


def normalize_root(url: str) -> str:
    """``file:///abs/path`` for a local path (or file URL), ``s3://bucket/prefix`` as given."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = parts.path if parts.scheme else url
        return "file://" + str(Path(path).expanduser().resolve())
    if parts.scheme == "s3":
        if not parts.hostname:
            raise UsageError(f"an S3 archive URL is s3://bucket/prefix, not {url!r}")
        if parts.username or parts.password:
            raise UsageError("an S3 archive URL holds credentials; set DVT_ARCHIVE_ACCESS_KEY_ID"
                             " and DVT_ARCHIVE_SECRET_ACCESS_KEY instead")
        return f"s3://{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
    raise UsageError(f"the archive URL must be a directory or s3://bucket/prefix, not {url!r}")


def env_options() -> dict[str, Any]:
    """S3 endpoint and key pair from DVT_ARCHIVE_* (else the standard AWS chain applies)."""
    names = {"endpoint_url": "DVT_ARCHIVE_ENDPOINT_URL",
             "access_key_id": "DVT_ARCHIVE_ACCESS_KEY_ID",
             "secret_access_key": "DVT_ARCHIVE_SECRET_ACCESS_KEY"}
    return {key: os.environ[env] for key, env in names.items() if os.environ.get(env)}


@dataclass
class ColdRoot:
    """A cold root opened for reading and writing: the filesystem and the base path on it."""

    url: str
    fs: Any
    base: str
    local: bool

    def path(self, relative: str) -> str:
        """The filesystem path of a file under the root."""
        return f"{self.base}/{relative}" if self.base else relative

    def put(self, relative: str, data: bytes) -> None:
        """Write a whole file (an S3 PUT, or a local write then rename: never half a file)."""
        path = self.path(relative)
        try:
            if self.local:
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                tmp = f"{path}.tmp-{os.getpid()}"
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, path)
            else:
                self.fs.pipe_file(path, data)
        except OSError as exc:
            raise _unavailable(self.url, exc) from exc

    def get(self, relative: str) -> bytes:
        """A whole file's bytes."""
        try:
            data: bytes = self.fs.cat_file(self.path(relative))
        except FileNotFoundError as exc:
            raise ArchiveCorrupt("an archive file the registry names is missing",
                                 details={"file": relative, "root": self.url}) from exc
        except OSError as exc:
            raise _unavailable(self.url, exc) from exc
        return data

    def open(self, relative: str) -> Any:
        """A file opened for (ranged) reading; ARCHIVE_CORRUPT if it is missing."""
        try:
            return self.fs.open(self.path(relative), "rb")
        except FileNotFoundError as exc:
            raise ArchiveCorrupt("an archive file the registry names is missing",
                                 details={"file": relative, "root": self.url}) from exc
        except OSError as exc:
            raise _unavailable(self.url, exc) from exc

    def remove(self, relative: str) -> None:
        """Delete a file if it exists (a tmp file of an interrupted local write too)."""
        path = self.path(relative)
        try:
            for candidate in [path, *self._tmp_files(path)]:
                if self.fs.exists(candidate):
                    self.fs.rm_file(candidate)
        except OSError as exc:
            raise _unavailable(self.url, exc) from exc

    def list_prefix(self, relative: str) -> list[str]:
        """Every file under a directory (prefix) of the root, relative to the root."""
        path = self.path(relative.rstrip("/"))
        try:
            if not self.fs.exists(path):
                return []
            found: list[str] = self.fs.find(path)
        except OSError as exc:
            raise _unavailable(self.url, exc) from exc
        cut = len(self.base) + 1 if self.base else 0
        return sorted(name[cut:] for name in found)

    def remove_prefix(self, relative: str) -> None:
        """Delete a directory (prefix) of the root and everything under it, if it exists."""
        path = self.path(relative.rstrip("/"))
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _unavailable(self.url, exc) from exc

    def prune_empty(self, relative: str) -> None:
        """Remove a local directory and its parents under the root while they are empty
        (an object store has no directories)."""
        if not self.local:
            return
        parts = relative.rstrip("/").split("/")
        while parts:
            path = self.path("/".join(parts))
            if not self.fs.exists(path) or self.fs.ls(path, detail=False):
                return
            self.fs.rmdir(path)
            parts.pop()

    def _tmp_files(self, path: str) -> list[str]:
        if not self.local:
            return []
        parent = path.rsplit("/", 1)[0]
        if not self.fs.exists(parent):
            return []
        return [p for p in self.fs.ls(parent, detail=False) if p.startswith(f"{path}.tmp-")]


def _unavailable(url: str, exc: BaseException) -> ArchiveUnavailable:
    return ArchiveUnavailable(f"the archive at {url} cannot be reached: {type(exc).__name__}",
                              details={"root": url})


def open_root(url: str, **options: Any) -> ColdRoot:
    """Open a cold root; S3 options: ``endpoint_url``, ``access_key_id``, ``secret_access_key``."""
    root = normalize_root(url)
    parts = urlsplit(root)
    if parts.scheme == "file":
        return ColdRoot(root, fsspec.filesystem("file"), parts.path.rstrip("/"), local=True)
    merged = {**env_options(), **options}
    kwargs: dict[str, Any] = {"skip_instance_cache": True}
    if merged.get("endpoint_url"):
        kwargs["endpoint_url"] = merged["endpoint_url"]
    if merged.get("access_key_id"):
        kwargs["key"] = merged["access_key_id"]
        kwargs["secret"] = merged.get("secret_access_key")
    fs = fsspec.filesystem("s3", **kwargs)
    return ColdRoot(root, fs, f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/"), local=False)


def partition_of(tenant_id: str, persisted_at: datetime) -> str:
    """The Hive-style directory of a tenant's events persisted on that UTC day."""
    day = persisted_at
    return (f"{tenant_prefix(tenant_id)}/year={day.year:04d}/month={day.month:02d}"
            f"/day={day.day:02d}")


def tenant_prefix(tenant_id: str) -> str:
    """The directory of all of a tenant's event files under a cold root."""
    return f"tenant={quote(tenant_id, safe='')}"


def data_file(tenant_id: str, persisted_at: datetime, batch_id: str) -> str:
    """The relative path of a batch's file for one tenant and day."""
    return f"{partition_of(tenant_id, persisted_at)}/part-{batch_id}.parquet"


def manifest_file(batch_id: str) -> str:
    """The relative path of a batch's manifest."""
    return f"{MANIFESTS}/{batch_id}.json"


def table_of(rows: Sequence[Row]) -> pa.Table:
    """Rows (any order) as a table sorted by run and runSeq."""
    ordered = sorted(rows, key=lambda r: (r[0], r[1], r[2]))
    columns: list[Sequence[Any]] = (list(zip(*ordered, strict=True)) if ordered
                                    else [() for _ in COLUMNS])
    return pa.Table.from_arrays(
        [pa.array(list(col), type=field.type) for col, field in zip(columns, SCHEMA, strict=True)],
        schema=SCHEMA,
    )


def encode(table: pa.Table) -> bytes:
    """A table as Parquet bytes (zstd, statistics on, bounded row groups)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS,
                   write_statistics=True)
    return sink.getvalue()


def decode(data: bytes, *, where: str, columns: Sequence[str] | None = None) -> pa.Table:
    """Parquet bytes back as a table of SCHEMA (or of its ``columns``); ARCHIVE_CORRUPT when
    they are not that."""
    expected = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
    try:
        table = pq.read_table(io.BytesIO(data), columns=None if columns is None else list(columns))
    except (pa.ArrowException, OSError) as exc:
        raise ArchiveCorrupt("an archive file is not readable Parquet",
                             details={"file": where}) from exc
    if not table.schema.equals(expected, check_metadata=False):
        raise ArchiveCorrupt("an archive file has an unexpected schema", details={"file": where})
    return table


def sha256(data: bytes) -> str:
    """The hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()
