"""The audit sealer and verifier on PostgreSQL (migration 0010, docs/audit.md).

The sealer walks events not yet sealed, per run in runSeq order, stores each one's chain hash
in dvt_audit_chain and signs a checkpoint over the heads it advanced. Appends never wait for
it: it reads committed rows only, and a run's rows commit in runSeq order (appends of a run are
serialised by its row lock). Runs archived before their first seal are read from the cold tier.
The verifier recomputes every chain from the events of both tiers and compares.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from dvt_engine.audit import (
    GENESIS,
    ChainLink,
    Finding,
    Head,
    RunEvidence,
    check_run,
    checkpoint_payload,
    heads_of,
    payload_digest,
    seal_events,
)
from dvt_engine.audit_keys import Keyring, Signer
from dvt_engine.errors import ArchiveCorrupt, ArchiveUnavailable, AuditBusy
from dvt_engine.waiting import settles_within
from dvt_statestore_pg.core import Conn
from dvt_statestore_pg.erasure import check_tombstones
from dvt_statestore_pg.store import PostgresRunStateStore
from dvt_statestore_pg.tiers import segment_from_row, segments_query

Row = tuple[int, datetime, str]
#: Keeps two sealers of one store from interleaving (checkpoint numbers, heads).
_SEAL_LOCK = 0x64767461  # "dvta"


@dataclass
class SealReport:
    """What a seal pass did."""

    runs: int = 0
    events: int = 0
    checkpoint: int | None = None
    checkpoints: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON data."""
        return {"runs": self.runs, "events": self.events, "checkpoint": self.checkpoint,
                "checkpoints": self.checkpoints, "gaps": self.gaps,
                "seconds": round(self.seconds, 3)}


@dataclass
class VerifyReport:
    """What verify checked and the first thing wrong in each run (and with the checkpoints)."""

    runs: int = 0
    events: int = 0
    checkpoints: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: Good tombstones: purges and retention expiries, signed (dvt_statestore_pg.erasure).
    erasures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON data."""
        return {"ok": self.ok, "runs": self.runs, "events": self.events,
                "checkpoints": self.checkpoints,
                "findings": [f.to_dict() for f in self.findings], "erasures": self.erasures}


def _t(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


async def _raw_events(store: PostgresRunStateStore, conn: Conn, tenant: str, run: str,
                      after: int) -> list[Row]:
    """A run's stored rows after ``after`` from both tiers, in runSeq order."""
    schema = store.config.schema
    cur = await conn.execute(sql.SQL(
        "SELECT run_seq, persisted_at, envelope::text FROM {} WHERE tenant_id = %s"
        " AND run_id = %s AND run_seq > %s ORDER BY run_seq").format(_t(schema, "dvt_events")),
        (tenant, run, after))
    hot: list[Row] = [(int(s), at, env) for s, at, env in await cur.fetchall()]
    if hot and hot[0][0] == after + 1:
        return hot
    cur = await conn.execute(segments_query(schema), {"tenants": [tenant], "runs": [run]})
    cold: list[Row] = []
    for seg_row in await cur.fetchall():
        segment = segment_from_row(seg_row)
        if segment.last_seq > after:
            rows = await store.cold_reader(segment.root_url).read_segment(segment)
            cold += [r for r in rows if r[0] > after]
    boundary = cold[-1][0] if cold else after
    return cold + [r for r in hot if r[0] > boundary]


def _contiguous(rows: list[Row], after: int, upto: int) -> list[Row]:
    """The rows after ``after`` up to ``upto`` without a gap (a gap is never sealed over)."""
    taken: list[Row] = []
    for row in rows:
        if row[0] != after + len(taken) + 1 or row[0] > upto:
            break
        taken.append(row)
    return taken


async def seal(store: PostgresRunStateStore, signer: Signer, *, batch_runs: int = 500
               ) -> SealReport:
    """Seal every event not yet sealed; each batch of runs commits with a checkpoint signed
    over the heads it advanced."""
    started = time.perf_counter()
    report = SealReport()
    schema = store.config.schema
    find = sql.SQL(
        "SELECT r.tenant_id, r.run_id, r.last_seq, coalesce(h.last_seq, 0), h.chain_hash"
        " FROM {runs} r LEFT JOIN {heads} h ON h.tenant_id = r.tenant_id AND h.run_id = r.run_id"
        " WHERE r.last_seq > coalesce(h.last_seq, 0) AND (r.tenant_id, r.run_id) > (%s, %s)"
        " ORDER BY r.tenant_id, r.run_id LIMIT %s").format(
            runs=_t(schema, "dvt_runs"), heads=_t(schema, "dvt_audit_heads"))

    async def work(conn: Conn) -> None:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_SEAL_LOCK,))
        row = await cur.fetchone()
        if not row or not row[0]:
            raise _Busy
        try:
            position = ("", "")  # the pass moves forward, so a run left at a gap is not retried
            while True:
                async with conn.transaction():
                    cur = await conn.execute(find, (*position, batch_runs))
                    todo = await cur.fetchall()
                    if not todo:
                        return
                    position = (todo[-1][0], todo[-1][1])
                    advanced = await _seal_batch(store, conn, todo, report)
                    if advanced:
                        report.checkpoint = await _write_checkpoint(conn, schema, signer,
                                                                    advanced)
                        report.checkpoints += 1
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_SEAL_LOCK,))

    try:
        await store._run(work)
    except _Busy:
        raise AuditBusy("another audit sealer is working on this store") from None
    report.seconds = time.perf_counter() - started
    return report


class _Busy(Exception):
    pass


async def _seal_batch(store: PostgresRunStateStore, conn: Conn, todo: list[tuple[Any, ...]],
                      report: SealReport) -> list[Head]:
    schema = store.config.schema
    cur = await conn.execute(sql.SQL(
        "SELECT e.tenant_id, e.run_id, e.run_seq, e.persisted_at, e.envelope::text FROM {events} e"
        " JOIN unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])"
        "   AS u(tenant_id, run_id, after, upto) ON e.tenant_id = u.tenant_id"
        "   AND e.run_id = u.run_id AND e.run_seq > u.after AND e.run_seq <= u.upto"
        " ORDER BY e.tenant_id, e.run_id, e.run_seq").format(events=_t(schema, "dvt_events")),
        ([r[0] for r in todo], [r[1] for r in todo], [int(r[3]) for r in todo],
         [int(r[2]) for r in todo]))
    hot: dict[tuple[str, str], list[Row]] = {}
    for tenant_id, run_id, seq, at, env in await cur.fetchall():
        hot.setdefault((tenant_id, run_id), []).append((int(seq), at, env))
    links: list[tuple[str, str, ChainLink]] = []
    heads: list[Head] = []
    for tenant, run, last_seq, after, head_hex in todo:
        after, last_seq = int(after), int(last_seq)
        rows = hot.get((tenant, run), [])
        if not rows or rows[0][0] != after + 1:
            rows = await _raw_events(store, conn, tenant, run, after)
        rows = _contiguous(rows, after, last_seq)
        if len(rows) < last_seq - after:
            report.gaps.append({"tenantId": tenant, "runId": run, "seq": after + len(rows) + 1})
        if not rows:
            continue
        previous = bytes.fromhex(head_hex) if head_hex else GENESIS
        new = seal_events(previous, rows)
        links += [(tenant, run, link) for link in new]
        heads.append(Head(tenant, run, new[-1].run_seq, new[-1].chain_hash))
    if not heads:
        return heads
    async with conn.cursor().copy(sql.SQL(
            "COPY {} (tenant_id, run_id, run_seq, event_hash, chain_hash) FROM STDIN").format(
                _t(schema, "dvt_audit_chain"))) as copy:
        for tenant, run, link in links:
            await copy.write_row((tenant, run, link.run_seq, link.event_hash, link.chain_hash))
    await conn.execute(sql.SQL(
        "INSERT INTO {} (tenant_id, run_id, last_seq, chain_hash)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[])"
        " ON CONFLICT (tenant_id, run_id) DO UPDATE SET last_seq = excluded.last_seq,"
        " chain_hash = excluded.chain_hash").format(_t(schema, "dvt_audit_heads")),
        ([h.tenant_id for h in heads], [h.run_id for h in heads], [h.run_seq for h in heads],
         [h.chain_hash for h in heads]))
    report.runs += len(heads)
    report.events += len(links)
    return heads


async def _write_checkpoint(conn: Conn, schema: str, signer: Signer, heads: list[Head]) -> int:
    cur = await conn.execute(sql.SQL(
        "SELECT checkpoint_id, payload FROM {} ORDER BY checkpoint_id DESC LIMIT 1").format(
            _t(schema, "dvt_audit_checkpoints")))
    last = await cur.fetchone()
    number = int(last[0]) + 1 if last else 1
    previous = payload_digest(last[1].encode()) if last else ""
    created = datetime.now(UTC)
    payload = checkpoint_payload(number, previous, signer.key_id, created, heads)
    await conn.execute(sql.SQL(
        "INSERT INTO {} (checkpoint_id, key_id, created_at, payload, signature)"
        " VALUES (%s, %s, %s, %s, %s)").format(_t(schema, "dvt_audit_checkpoints")),
        (number, signer.key_id, created, payload.decode(), signer.sign(payload)))
    return number


async def seal_forever(store: PostgresRunStateStore, signer: Signer, *, interval: float,
                       stop: asyncio.Event,
                       on_pass: Callable[[SealReport], None] | None = None) -> None:
    """Seal every ``interval`` seconds until ``stop`` is set (a host's background loop).

    A pass that finds another sealer at work is skipped; other errors end the loop (the host
    decides whether to restart it). ``on_pass`` gets each pass's report (for logs, metrics).
    """
    while not stop.is_set():
        try:
            report = await seal(store, signer)
        except AuditBusy:
            report = SealReport()
        if on_pass is not None:
            on_pass(report)
        await settles_within(stop.wait(), interval)


async def verify(store: PostgresRunStateStore, keyring: Keyring, *, tenant_id: str | None = None,
                 run_id: str | None = None) -> VerifyReport:
    """Recompute the chains of the selected runs (both tiers) and check them and the
    checkpoints."""
    report = VerifyReport()
    schema = store.config.schema

    async def work(conn: Conn) -> None:
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            signed = await _checked_checkpoints(conn, schema, keyring, report)
            stones = await check_tombstones(conn, schema, keyring, tenant_id)
            report.erasures, report.findings = stones.erasures, report.findings + stones.findings
            cur = await conn.execute(sql.SQL(
                "SELECT tenant_id, run_id, last_seq FROM {} WHERE (%(t)s::text IS NULL OR"
                " tenant_id = %(t)s) AND (%(r)s::text IS NULL OR run_id = %(r)s)"
                " ORDER BY tenant_id, run_id").format(_t(schema, "dvt_runs")),
                {"t": tenant_id, "r": run_id})
            runs = {(t, r): int(n) for t, r, n in await cur.fetchall()}
            for key in signed:
                if key not in runs and _expired(signed[key], stones.expired.get(key)):
                    continue  # removed by a retention pass, as its tombstone signs
                if (tenant_id in (None, key[0])) and (run_id in (None, key[1])):
                    runs.setdefault(key, 0)
            for (tenant, run), last_seq in sorted(runs.items()):
                cur = await conn.execute(sql.SQL(
                    "SELECT run_seq, event_hash, chain_hash FROM {} WHERE run_id = %s"
                    " AND tenant_id = %s").format(_t(schema, "dvt_audit_chain")), (run, tenant))
                links = {int(s): ChainLink(int(s), e, c) for s, e, c in await cur.fetchall()}
                try:
                    events = await _raw_events(store, conn, tenant, run, 0)
                except (ArchiveCorrupt, ArchiveUnavailable) as exc:
                    report.runs += 1
                    report.findings.append(Finding("archive", f"{exc.code}: {exc}", tenant, run))
                    continue
                evidence = RunEvidence(tenant, run, events, links, last_seq,
                                       signed.get((tenant, run), []))
                report.runs += 1
                report.events += len(events)
                finding = check_run(evidence)
                if finding is not None:
                    report.findings.append(finding)

    await store._run(work)
    return report


def _expired(signed: list[tuple[int, str, int]], expired: tuple[int, str] | None) -> bool:
    """Whether a retention tombstone covers every head a checkpoint signed of a run."""
    if expired is None:
        return False
    return all(seq < expired[0] or (seq, chain) == expired[:2] for seq, chain, _ in signed)


async def _checked_checkpoints(conn: Conn, schema: str, keyring: Keyring, report: VerifyReport
                               ) -> dict[tuple[str, str], list[tuple[int, str, int]]]:
    """Check every checkpoint (signature, numbering, link); the heads of the good ones."""
    cur = await conn.execute(sql.SQL(
        "SELECT checkpoint_id, key_id, payload, signature FROM {} ORDER BY checkpoint_id"
    ).format(_t(schema, "dvt_audit_checkpoints")))
    signed: dict[tuple[str, str], list[tuple[int, str, int]]] = {}
    previous = ""
    expected = 1
    for number, key_id, payload, signature in await cur.fetchall():
        report.checkpoints += 1
        number = int(number)
        problem = keyring.verify(key_id, payload.encode(), signature)
        data = json.loads(payload) if problem is None else {}
        if problem is None and (data.get("checkpoint") != number or data.get("keyId") != key_id):
            problem = "its row does not match its signed payload"
        if problem is None and (number != expected or data.get("previous") != previous):
            problem = (f"checkpoint {expected} is missing or was replaced" if number != expected
                       else "it does not follow the previous checkpoint")
        if problem is not None:
            what = "unknown-key" if problem.startswith("unknown key id") else "checkpoint"
            report.findings.append(Finding(what, f"checkpoint {number}: {problem}",
                                           checkpoint=number))
        else:
            for head in heads_of(data):
                signed.setdefault((head.tenant_id, head.run_id), []).append(
                    (head.run_seq, head.chain_hash, number))
        previous = payload_digest(payload.encode())
        expected = number + 1
    return signed
