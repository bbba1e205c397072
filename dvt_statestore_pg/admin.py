"""Operator tasks behind ``dvt migrate`` and ``dvt store rebuild``, as plain async functions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from pydantic_core import from_json

from dvt_engine.errors import StoreUnavailable
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.projector import apply
from dvt_engine.stored_events import StoredEvent, header_snapshot
from dvt_statestore_pg.config import parse_store_url
from dvt_statestore_pg.migrations import apply_migrations

RUNS_PER_PAGE = 500

#: Reads the archived events of some runs (``dvt_archive.rebuild``): the connection, the runs'
#: (tenant, run) keys, and back each run's cold events in runSeq order.
ColdLoader = Callable[
    [psycopg.AsyncConnection[Any], list[tuple[str, str]]],
    Awaitable[dict[tuple[str, str], list[StoredEvent]]],
]


@dataclass
class RebuildReport:
    """What a rebuild or catch-up did."""

    runs: int = 0
    events: int = 0
    written: int = 0
    #: Runs whose snapshot, as readers saw it, differed from the one recomputed from the log.
    differed: list[str] = field(default_factory=list)
    #: Runs that received new events while they were being recomputed (left to the appender).
    raced: list[str] = field(default_factory=list)
    #: Runs with events in the cold archive, left as they are (rebuild them ``--from-cold``).
    archived: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def merge(self, part: RebuildReport) -> None:
        """Add a page's counts and lists (in page order) to these."""
        self.runs += part.runs
        self.events += part.events
        self.written += part.written
        self.differed += part.differed
        self.raced += part.raced
        self.archived += part.archived

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-safe data, for ``--json`` output."""
        return {
            "runs": self.runs,
            "events": self.events,
            "written": self.written,
            "differed": self.differed,
            "raced": self.raced,
            "archived": self.archived,
            "seconds": round(self.seconds, 3),
        }


async def _connect(url: str) -> tuple[psycopg.AsyncConnection[Any], str]:
    config = parse_store_url(url)
    try:
        conn = await psycopg.AsyncConnection.connect(config.conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL at {config.redacted()}: {exc}"
        ) from exc
    return conn, config.schema


async def migrate(url: str) -> list[int]:
    """Apply pending migrations to the URL's schema; returns the versions applied now."""
    conn, schema = await _connect(url)
    async with conn:
        return await apply_migrations(conn, schema)


async def rebuild(url: str, *, tenant_id: str | None = None,
                  cold: ColdLoader | None = None) -> RebuildReport:
    """Recompute every stored snapshot from the whole log and store it.

    Rebuilt snapshots are byte-identical to what the incremental path produces; any run where
    they were not is listed in ``differed`` (and then corrected). A run whose older events are
    in the cold archive is rebuilt only with ``cold`` (reading them); otherwise it is listed in
    ``archived`` and left as it is.
    """
    return await _recompute(url, tenant_id=tenant_id, full=True, cold=cold)


async def catch_up(url: str, *, tenant_id: str | None = None) -> RebuildReport:
    """The incremental projector: bring every stored snapshot up to the end of its log."""
    return await _recompute(url, tenant_id=tenant_id, full=False)


#: One page of runs as read: (tenant, run, header, last_seq, snapshot_seq, snapshot, in the
#: cold archive, its events from the hot log as JSON text or None).
PageRow = tuple[str, str, str, int, int, str, bool, str | None]
#: One recomputed snapshot to store: (tenant, run, snapshot JSON, seq, status, substatus).
Fresh = tuple[str, str, str, int, str, str | None]


def _queries(schema: str, full: bool) -> tuple[sql.Composed, sql.Composed]:
    """The read of one page of runs with their logs, and the write of their snapshots."""
    runs = sql.Identifier(schema, "dvt_runs")
    # A page of runs and each run's log in one statement (one round trip, so the next page is
    # read while this one is folded), each log as one JSON array of [runSeq, envelope]:
    # decoded in one parser call per run, and no sort of the page's wide event rows.
    read = sql.SQL(
        "SELECT r.tenant_id, r.run_id, r.header::text, r.last_seq, r.snapshot_seq,"
        " r.snapshot::text,"
        + (" EXISTS (SELECT 1 FROM {archived} a WHERE a.tenant_id = r.tenant_id"
           " AND a.run_id = r.run_id)," if full else " false,")
        + " log.events FROM (SELECT * FROM {runs} WHERE (tenant_id, run_id) > (%s, %s)"
        " AND (%s::text IS NULL OR tenant_id = %s)"
        + ("" if full else " AND snapshot_seq < last_seq")
        + " ORDER BY tenant_id, run_id LIMIT %s) r"
        " LEFT JOIN LATERAL (SELECT json_agg(json_build_array(e.run_seq, e.envelope)"
        " ORDER BY e.run_seq)::text AS events FROM {events} e"
        " WHERE e.tenant_id = r.tenant_id AND e.run_id = r.run_id"
        + (" AND e.run_seq > 0" if full else " AND e.run_seq > r.snapshot_seq")
        + ") log ON true ORDER BY r.tenant_id, r.run_id"
    ).format(runs=runs, events=sql.Identifier(schema, "dvt_events"),
             archived=sql.Identifier(schema, "dvt_archived_runs"))
    # The snapshots travel as one JSON array, not a json[] parameter: psycopg escapes every
    # element of a text array with a regular expression, which took most of a rebuild's time
    # on large snapshots. json_array_elements keeps each element's text as it was. ROWS FROM
    # pairs the n-th snapshot with the n-th key; joined on an ordinality instead, the planner
    # chose a nested loop that rescanned the page's snapshots once per run (quadratic, and
    # spilled to disk for large snapshots: 4 s for 500 runs of a 50-step plan).
    write = sql.SQL(
        "UPDATE {runs} r SET snapshot = u.snapshot, snapshot_seq = u.seq,"
        " status = u.status, substatus = u.substatus"
        " FROM ROWS FROM (unnest(%s::text[]), unnest(%s::text[]), unnest(%s::bigint[]),"
        "   unnest(%s::text[]), unnest(%s::text[]), json_array_elements(%s::json))"
        "   AS u(tenant_id, run_id, seq, status, substatus, snapshot)"
        " WHERE r.tenant_id = u.tenant_id AND r.run_id = u.run_id AND r.last_seq = u.seq"
        " RETURNING r.tenant_id, r.run_id"
    ).format(runs=runs)
    return read, write


def _hot_events(text: str | None) -> list[StoredEvent]:
    """A run's log as the read gives it: stored envelopes, validated when they were written,
    read as records for the fold (dvt_engine.stored_events), not as validated Event models."""
    return [] if text is None else [StoredEvent(env, seq) for seq, env in from_json(text)]


def _fold_page(page: list[PageRow], colds: dict[tuple[str, str], list[StoredEvent]],
               full: bool, cold: bool, report: RebuildReport) -> list[Fresh]:
    """Each run of a page recomputed from its log: the snapshots to store (CPU only)."""
    batch: list[Fresh] = []
    for tenant, run_id, header_text, last_seq, snapshot_seq, snapshot_text, in_cold, log in page:
        if in_cold and not cold:
            report.archived.append(run_id)
            continue
        report.runs += 1
        tail = _hot_events(log)
        if in_cold:
            older = colds.get((tenant, run_id), [])
            boundary = older[-1].run_seq or 0 if older else 0
            tail = older + [e for e in tail if (e.run_seq or 0) > boundary]
        report.events += len(tail)
        if full:
            fresh = apply(header_snapshot(header_text), tail)
            fresh_json = fresh.model_dump_json()
            # Readers see the stored text when it is up to date: equal text, equal view.
            if snapshot_seq != last_seq or snapshot_text != fresh_json:
                stored = RunSnapshot.model_validate_json(snapshot_text)
                if apply(stored, tail).model_dump_json() != fresh_json:
                    report.differed.append(run_id)
        else:
            fresh = apply(RunSnapshot.model_validate_json(snapshot_text), tail)
            fresh_json = fresh.model_dump_json()
        seq = fresh.last_event_seq
        if seq != last_seq:
            report.raced.append(run_id)
            continue
        batch.append((tenant, run_id, fresh_json, seq, fresh.status.value,
                      fresh.substatus.value if fresh.substatus else None))
    return batch


async def _recompute(url: str, *, tenant_id: str | None, full: bool,
                     cold: ColdLoader | None = None) -> RebuildReport:
    started = time.perf_counter()
    report = RebuildReport()
    read_query, write_query = _queries(parse_store_url(url).schema, full)
    reader, _ = await _connect(url)
    try:
        writer, _ = await _connect(url)
    except BaseException:
        await reader.close()
        raise

    async def read(after: tuple[str, str]) -> tuple[list[PageRow], dict[Any, Any]]:
        cur = await reader.execute(read_query, (*after, tenant_id, tenant_id, RUNS_PER_PAGE))
        page: list[PageRow] = await cur.fetchall()
        archived = [(row[0], row[1]) for row in page if row[6]]
        colds = await cold(reader, archived) if cold is not None and archived else {}
        return page, colds

    async def write(batch: list[Fresh]) -> None:
        tenants, ids, snapshots, seqs, statuses, substatuses = (
            list(col) for col in zip(*batch, strict=True))
        cur = await writer.execute(
            write_query, (tenants, ids, seqs, statuses, substatuses,
                          "[" + ",".join(snapshots) + "]"))
        written = {(row[0], row[1]) for row in await cur.fetchall()}
        report.written += len(written)
        report.raced.extend(b[1] for b in batch if (b[0], b[1]) not in written)

    # Three stages overlap: the database reads the next page and stores the last one while
    # this page is folded in a worker thread (the fold is pure; its report is merged here).
    async with reader, writer:
        reading = asyncio.create_task(read(("", "")))
        writing: asyncio.Task[None] | None = None
        try:
            while True:
                page, colds = await reading
                if not page:
                    break
                reading = asyncio.create_task(read((page[-1][0], page[-1][1])))
                part = RebuildReport()
                batch = await asyncio.to_thread(_fold_page, page, colds, full,
                                                cold is not None, part)
                report.merge(part)
                if writing is not None:
                    await writing
                writing = asyncio.create_task(write(batch)) if batch else None
            if writing is not None:
                await writing
        finally:
            # Only after an error: stop the stage still running before its connection closes.
            pending = [t for t in (reading, writing) if t is not None and not t.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    report.seconds = time.perf_counter() - started
    return report
