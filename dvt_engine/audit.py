"""Tamper evidence for the event log: the per-run hash chain and signed checkpoints (docs/audit.md).

Pure rules only: what bytes an event contributes, how the chain is computed, what a checkpoint
signs, and how a run's stored chain is compared with its events. The PostgreSQL sealer and
verifier (dvt_statestore_pg.audit) and the keys (dvt_engine.audit_keys) build on these.

The chain of a run: ``h(0)`` is 32 zero bytes; ``h(n) = sha256(h(n-1) || event_bytes(n))``,
where ``event_bytes`` is the RFC 8785 canonical JSON of ``{"runSeq", "persistedAt",
"envelope"}`` with the envelope parsed from the exact text the store holds (hot or cold).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dvt_engine.checksum import canonical_json

GENESIS = bytes(32)
CHECKPOINT_VERSION = 1


def persisted_text(value: datetime) -> str:
    """A store time as the chain hashes it: UTC, microseconds, ``Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_bytes(run_seq: int, persisted_at: datetime, envelope: str) -> bytes:
    """The canonical bytes of one stored event (its envelope text, runSeq and persistedAt)."""
    return canonical_json({"runSeq": int(run_seq), "persistedAt": persisted_text(persisted_at),
                           "envelope": json.loads(envelope)})


def content_hash(persisted_at: datetime, envelope: str) -> str:
    """sha256 (hex) of an event without its place: what finds a moved event's sealed place."""
    return hashlib.sha256(canonical_json({"persistedAt": persisted_text(persisted_at),
                                          "envelope": json.loads(envelope)})).hexdigest()


def event_forms(run_seq: int, persisted_at: datetime, envelope: str) -> tuple[bytes, str]:
    """``event_bytes`` and ``content_hash`` of one event, canonicalising the envelope once.

    Both are JCS objects whose keys sort as envelope < persistedAt < runSeq, so they are the
    envelope's canonical bytes between fixed text (persistedText is plain ASCII and runSeq an
    integer, both canonical as written); test_audit_chain checks them against the JCS forms.
    """
    inner = b'{"envelope":' + canonical_json(json.loads(envelope)) + (
        ',"persistedAt":"' + persisted_text(persisted_at) + '"').encode()
    return inner + b',"runSeq":' + str(int(run_seq)).encode() + b"}", \
        hashlib.sha256(inner + b"}").hexdigest()


def chain_next(previous: bytes, data: bytes) -> bytes:
    """h(n) = sha256(h(n-1) || event_bytes(n))."""
    return hashlib.sha256(previous + data).digest()


@dataclass(frozen=True)
class ChainLink:
    """The sealed record of one event: its content hash and the chain hash through it (hex)."""

    run_seq: int
    event_hash: str
    chain_hash: str


def seal_events(previous: bytes, rows: Iterable[tuple[int, datetime, str]]) -> list[ChainLink]:
    """Chain links of consecutive stored rows (runSeq, persistedAt, envelope) after ``previous``."""
    links = []
    head = previous
    for seq, at, envelope in rows:
        data, content = event_forms(seq, at, envelope)
        head = chain_next(head, data)
        links.append(ChainLink(seq, content, head.hex()))
    return links


@dataclass(frozen=True)
class Head:
    """A run's chain head as a checkpoint signs it."""

    tenant_id: str
    run_id: str
    run_seq: int
    chain_hash: str

    def to_dict(self) -> dict[str, Any]:
        """The head as it appears in a checkpoint's payload."""
        return {"tenantId": self.tenant_id, "runId": self.run_id, "seq": self.run_seq,
                "chainHash": self.chain_hash}


def checkpoint_payload(checkpoint_id: int, previous: str, key_id: str, created_at: datetime,
                       heads: Sequence[Head]) -> bytes:
    """The exact bytes a checkpoint's signature covers (canonical JSON)."""
    ordered = sorted(heads, key=lambda h: (h.tenant_id, h.run_id))
    return canonical_json({"version": CHECKPOINT_VERSION, "checkpoint": checkpoint_id,
                           "previous": previous, "keyId": key_id,
                           "createdAt": persisted_text(created_at),
                           "heads": [h.to_dict() for h in ordered]})


def payload_digest(payload: bytes) -> str:
    """What the next checkpoint names as ``previous``."""
    return hashlib.sha256(payload).hexdigest()


def heads_of(payload: Mapping[str, Any]) -> list[Head]:
    """The heads a (verified) checkpoint payload signs."""
    return [Head(h["tenantId"], h["runId"], int(h["seq"]), h["chainHash"])
            for h in payload.get("heads", [])]


@dataclass(frozen=True)
class Finding:
    """One thing verify found wrong: where, and what (altered, deleted, inserted, ...)."""

    what: str
    detail: str
    tenant_id: str | None = None
    run_id: str | None = None
    run_seq: int | None = None
    checkpoint: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON data."""
        data: dict[str, Any] = {"what": self.what, "detail": self.detail}
        for key, value in (("tenantId", self.tenant_id), ("runId", self.run_id),
                           ("seq", self.run_seq), ("checkpoint", self.checkpoint)):
            if value is not None:
                data[key] = value
        return data


@dataclass
class RunEvidence:
    """What verify knows of one run: its events (both tiers), chain rows, counter, signed heads."""

    tenant_id: str
    run_id: str
    events: list[tuple[int, datetime, str]]
    links: dict[int, ChainLink]
    last_seq: int
    signed: list[tuple[int, str, int]] = field(default_factory=list)  # seq, hash, checkpoint


def check_run(run: RunEvidence) -> Finding | None:
    """The first thing wrong with a run's events against its chain and signed heads, if any."""
    def found(what: str, seq: int | None, detail: str, cp: int | None = None) -> Finding:
        return Finding(what, detail, run.tenant_id, run.run_id, seq, cp)

    forms = {seq: event_forms(seq, at, env) for seq, at, env in run.events}
    hashes = {seq: content for seq, (_, content) in forms.items()}
    sealed_at = {link.event_hash: seq for seq, link in run.links.items()}
    sealed_upto = max(run.links, default=0)
    top = max([sealed_upto, *forms, *(s for s, _, _ in run.signed)])
    computed: dict[int, str] = {}
    head = GENESIS
    for seq in range(1, top + 1):
        link = run.links.get(seq)
        if seq not in forms:
            if link is not None or any(s >= seq for s, _, _ in run.signed):
                return found("deleted", seq, f"event {seq} was sealed but is not in the log")
            later = [s for s in forms if s > seq]
            if not later:
                return None  # the log ends here, past everything sealed and signed
            beyond = min(later)
            if beyond > run.last_seq:
                return found("inserted", beyond, f"event {beyond} is beyond the run's counter"
                             f" ({run.last_seq}): no append wrote it")
            return found("deleted", seq, f"event {seq} is missing before event {beyond}")
        if seq > run.last_seq:
            return found("inserted", seq, f"event {seq} is beyond the run's counter"
                         f" ({run.last_seq}): no append wrote it")
        head = chain_next(head, forms[seq][0])
        computed[seq] = head.hex()
        if link is None:
            if seq <= sealed_upto:
                return found("chain", seq, f"the chain has no record of event {seq}")
            continue  # not sealed yet
        if hashes[seq] != link.event_hash:
            origin = sealed_at.get(hashes[seq])
            if origin is not None:
                return found("reordered", seq,
                             f"the event at {seq} was sealed at runSeq {origin}")
            if hashes.get(seq + 1) == link.event_hash:
                return found("inserted", seq, f"an unsealed event was inserted at {seq};"
                             f" the sealed one follows it")
            return found("altered", seq, f"event {seq} differs from the one sealed")
        if head.hex() != link.chain_hash:
            return found("chain", seq, f"the stored chain hash of event {seq} does not follow"
                         " from the events")
    for seq, signed_hash, cp in sorted(run.signed):
        if computed.get(seq) != signed_hash:
            return found("signature", seq, f"the chain through event {seq} differs from the one"
                         f" signed in checkpoint {cp}", cp)
    return None
