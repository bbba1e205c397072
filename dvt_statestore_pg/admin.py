"""Operator tasks behind ``dvt migrate`` and ``dvt store rebuild``, as plain async functions."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from dvt_engine.errors import StoreUnavailable
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunHeader
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.projector import apply, project
from dvt_statestore_pg.config import parse_store_url
from dvt_statestore_pg.core import event_with_seq
from dvt_statestore_pg.migrations import apply_migrations

RUNS_PER_PAGE = 500

#: Reads the archived events of some runs (``dvt_archive.rebuild``): the connection, the runs'
#: (tenant, run) keys, and back each run's cold events in runSeq order.
ColdLoader = Callable[
    [psycopg.AsyncConnection[Any], list[tuple[str, str]]],
    Awaitable[dict[tuple[str, str], list[Event]]],
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


async def _recompute(url: str, *, tenant_id: str | None, full: bool,
                     cold: ColdLoader | None = None) -> RebuildReport:
    started = time.perf_counter()
    report = RebuildReport()
    conn, schema = await _connect(url)
    runs = sql.Identifier(schema, "dvt_runs")
    events = sql.Identifier(schema, "dvt_events")
    page_query = sql.SQL(
        "SELECT tenant_id, run_id, header::text, last_seq, snapshot_seq, snapshot::text,"
        + (" EXISTS (SELECT 1 FROM {archived} a WHERE a.tenant_id = r.tenant_id"
           " AND a.run_id = r.run_id)" if full else " false")
        + " FROM {runs} r WHERE (tenant_id, run_id) > (%s, %s)"
        " AND (%s::text IS NULL OR tenant_id = %s)"
        + ("" if full else " AND snapshot_seq < last_seq")
        + " ORDER BY tenant_id, run_id LIMIT %s"
    ).format(runs=runs, archived=sql.Identifier(schema, "dvt_archived_runs"))
    events_query = sql.SQL(
        "SELECT e.tenant_id, e.run_id, e.run_seq, e.envelope::text FROM {events} e"
        " JOIN unnest(%s::text[], %s::text[], %s::bigint[]) AS u(tenant_id, run_id, after_seq)"
        " ON e.tenant_id = u.tenant_id AND e.run_id = u.run_id AND e.run_seq > u.after_seq"
        " ORDER BY e.tenant_id, e.run_id, e.run_seq"
    ).format(events=events)
    # The snapshots travel as one JSON array, not a json[] parameter: psycopg escapes every
    # element of a text array with a regular expression, which took most of a rebuild's time
    # on large snapshots. json_array_elements keeps each element's text as it was.
    write_query = sql.SQL(
        "UPDATE {runs} r SET snapshot = s.snapshot, snapshot_seq = u.seq,"
        " status = u.status, substatus = u.substatus"
        " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[])"
        "   WITH ORDINALITY AS u(tenant_id, run_id, seq, status, substatus, n)"
        " JOIN json_array_elements(%s::json) WITH ORDINALITY AS s(snapshot, n) USING (n)"
        " WHERE r.tenant_id = u.tenant_id AND r.run_id = u.run_id AND r.last_seq = u.seq"
        " RETURNING r.tenant_id, r.run_id"
    ).format(runs=runs)
    async with conn:
        cursor = ("", "")
        while True:
            cur = await conn.execute(
                page_query, (*cursor, tenant_id, tenant_id, RUNS_PER_PAGE)
            )
            page = await cur.fetchall()
            if not page:
                break
            cursor = (page[-1][0], page[-1][1])
            tenants = [row[0] for row in page]
            ids = [row[1] for row in page]
            afters = [0 if full else int(row[4]) for row in page]
            cur = await conn.execute(events_query, (tenants, ids, afters))
            tails: dict[tuple[str, str], list[Event]] = {
                (row[0], row[1]): [] for row in page
            }
            for tenant, run_id, seq, envelope in await cur.fetchall():
                tails[(tenant, run_id)].append(event_with_seq(envelope, seq))
            archived = [(row[0], row[1]) for row in page if row[6]]
            colds = await cold(conn, archived) if cold is not None and archived else {}
            batch: list[tuple[str, str, str, int, str, str | None]] = []
            for tenant, run_id, header_text, last_seq, snapshot_seq, snapshot_text, in_cold in page:
                if in_cold and cold is None:
                    report.archived.append(run_id)
                    continue
                report.runs += 1
                tail = tails[(tenant, run_id)]
                if in_cold:
                    older = colds.get((tenant, run_id), [])
                    boundary = older[-1].run_seq or 0 if older else 0
                    tail = older + [e for e in tail if (e.run_seq or 0) > boundary]
                report.events += len(tail)
                if full:
                    fresh = project(RunHeader.model_validate_json(header_text), tail)
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
                batch.append(
                    (
                        tenant,
                        run_id,
                        fresh_json,
                        seq,
                        fresh.status.value,
                        fresh.substatus.value if fresh.substatus else None,
                    )
                )
            if batch:
                tenants_, ids_, snapshots, seqs, statuses, substatuses = (
                    list(col) for col in zip(*batch, strict=True))
                cur = await conn.execute(
                    write_query, (tenants_, ids_, seqs, statuses, substatuses,
                                  "[" + ",".join(map(str, snapshots)) + "]"),
                )
                written = {(row[0], row[1]) for row in await cur.fetchall()}
                report.written += len(written)
                report.raced += [b[1] for b in batch if (b[0], b[1]) not in written]
    report.seconds = time.perf_counter() - started
    return report
