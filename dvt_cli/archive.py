"""Bodies of the cold archive commands: archive run, store rebuild --from-cold, audit export."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from typing import Any

from dvt_cli import output as out
from dvt_cli.ops import _pg_url
from dvt_cli.settings import Settings, dvt_home
from dvt_engine.errors import UsageError


def _archive_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UsageError(f"the cold archive is not available in this installation ({exc})",
                         details={"module": name, "hint": "pip install 'dvt[archive]'"}
                         ) from None


def archive_url(given: str | None) -> str:
    """The cold root: ``--to`` / DVT_ARCHIVE_URL, else ``$DVT_HOME/archive``."""
    return given or str(dvt_home() / "archive")


def parse_time(text: str, option: str) -> datetime:
    """An ISO date or time; a date means its midnight UTC, a time without zone is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option} takes an ISO date or time (2026-01-31, 2026-01-31T12:00Z),"
                         f" not {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def archive_run(settings: Settings, older_than: str, dry_run: bool,
                      to: str | None, tenant: str | None) -> int:
    """Move the events of terminal runs idle longer than ``older_than`` to the cold archive."""
    url = _pg_url(settings)
    archiver = _archive_module("dvt_archive.archiver")
    report = await archiver.archive_runs(url, archive_url(to),
                                         older_than=archiver.parse_age(older_than),
                                         dry_run=dry_run, tenant_id=tenant)
    data = report.to_dict()
    if settings.json:
        out.emit_json({"archive": data})
        return out.EXIT_OK
    verb = "would archive" if dry_run else "archived"
    out.say(f"{verb} {data['runs']} runs ({data['events']} events) idle since before"
            f" {data['cutoff']} to {data['root']}")
    if not dry_run:
        out.say(f"  {data['batches']} batches, {data['files']} files, {data['bytes']} bytes"
                f" in {data['seconds']:.2f}s")
    if data["heldByOutbox"]:
        out.say(f"  left hot: {data['heldByOutbox']} runs with undelivered outbox events")
    if data["cleaned"]:
        out.say(f"  cleaned up {data['cleaned']} interrupted batches")
    return out.EXIT_OK


async def rebuild_from_cold(settings: Settings) -> int:
    """Recompute every snapshot from the Parquet archive and the hot log."""
    url = _pg_url(settings)
    rebuild = _archive_module("dvt_archive.rebuild")
    result = (await rebuild.rebuild_from_cold(url)).to_dict()
    if settings.json:
        out.emit_json({"rebuilt": result})
        return out.EXIT_OK
    out.say(f"rebuilt {result['runs']} run snapshots from {result['events']} events (hot and"
            f" cold) in {float(result['seconds']):.2f}s")
    for key in ("differed", "raced"):
        if result.get(key):
            out.say(f"  {key}: {', '.join(map(str, result[key]))}")
    return out.EXIT_OK


async def audit_export(settings: Settings, tenant: str, start: str, end: str, fmt: str,
                       to: str) -> int:
    """Write a tenant's events persisted in [start, end) from both tiers, with a manifest."""
    url = _pg_url(settings)
    export = _archive_module("dvt_archive.export")
    report = await export.export_events(url, tenant, parse_time(start, "--from"),
                                        parse_time(end, "--to"), to, fmt=fmt)
    data = report.to_dict()
    if settings.json:
        out.emit_json({"export": data})
        return out.EXIT_OK
    out.say(f"exported {data['rows']} events ({data['hotRows']} hot, {data['coldRows']} cold)"
            f" to {to}")
    for entry in data["files"]:
        out.say(f"  {entry['path']}: {entry['rows']} rows, sha256 {entry['sha256']}")
    return out.EXIT_OK
