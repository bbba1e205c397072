"""The cold tier port: events of finished runs read back from archive files.

A store that moves old events out of its hot log (the PostgreSQL store with ``dvt archive``)
keeps a registry of *segments*: runSeq ranges of one run and the files that hold them under a
cold root (``file:///...`` or ``s3://bucket/prefix``). A ``ColdEventReader`` reads a segment's
rows back exactly as they were stored (runSeq, persistedAt, the envelope's text), so a read
across tiers gives the same events, byte for byte, as before the move. Implementations are
found by URL scheme through the ``dvt.cold_stores`` entry points (``dvt_archive`` ships
``file`` and ``s3`` on Parquet over fsspec).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from dvt_engine.errors import UsageError

COLD_STORE_GROUP = "dvt.cold_stores"

#: One archived event: runSeq, persistedAt (UTC) and the envelope's stored text.
ColdRow = tuple[int, datetime, str]


@dataclass(frozen=True)
class ColdSegment:
    """Events ``first_seq..last_seq`` of one run, in ``files`` (relative to ``root_url``)."""

    tenant_id: str
    run_id: str
    first_seq: int
    last_seq: int
    root_url: str
    files: tuple[str, ...]


class ColdEventReader(abc.ABC):
    """Reads archived events under one cold root."""

    root_url: str

    @abc.abstractmethod
    async def read_segment(self, segment: ColdSegment) -> list[ColdRow]:
        """The segment's rows in runSeq order; ARCHIVE_CORRUPT if any is missing."""

    async def close(self) -> None:  # noqa: B027 - most readers hold nothing to release
        """Release what the reader holds."""


def open_cold_reader(root_url: str, **options: Any) -> ColdEventReader:
    """A reader for ``root_url``, from the ``dvt.cold_stores`` entry point of its scheme."""
    scheme = urlsplit(root_url).scheme or "file"
    for ep in entry_points(group=COLD_STORE_GROUP, name=scheme):
        factory = ep.load()
        reader: ColdEventReader = factory(root_url, **options)
        return reader
    raise UsageError(
        f"no cold archive reader for {scheme!r} URLs is installed",
        details={"scheme": scheme, "hint": "pip install 'dvt[archive]'"},
    )
