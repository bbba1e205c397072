"""Signed records of deliberate removals: tenant purges and retention expiries (docs/audit.md).

Pure rules only: the bytes a tombstone's Ed25519 signature covers, what a retention term means
in days, and how a checkpoint is rewritten without a purged tenant's heads. The PostgreSQL side
(dvt_statestore_pg.erasure) stores and checks them; dvt_archive.purge and dvt_archive.retention
do the removals.

A tombstone is the canonical JSON (RFC 8785)::

    {"version": 1, "tombstone": 7, "kind": "purge" | "retention", "tenantId": "acme",
     "createdAt": "...Z", "keyId": "2026-q1", "actor": "alice", "removed": {"runs": 12, ...},
     "runs": [{"runId", "seq", "chainHash"}],          # retention: the expired runs' heads
     "checkpoints": {"rewritten": [3, 9], "before": "<sha256>", "after": "<sha256>"}}  # purge
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from dvt_engine.audit import checkpoint_payload, heads_of, persisted_text
from dvt_engine.checksum import canonical_json

TOMBSTONE_VERSION = 1
KINDS = ("purge", "retention")
#: A tenant without a policy keeps runs hot this long, and its log this many years.
DEFAULT_HOT_DAYS = 90
DEFAULT_COLD_YEARS = 7


@dataclass(frozen=True)
class RetentionPolicy:
    """A tenant's terms: days in the hot log, then years the log is kept (from each event)."""

    tenant_id: str
    hot_days: int = DEFAULT_HOT_DAYS
    cold_years: int = DEFAULT_COLD_YEARS
    explicit: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The policy as JSON data (``default`` when the tenant has no row of its own)."""
        return {"tenantId": self.tenant_id, "hotDays": self.hot_days,
                "coldYears": self.cold_years, "default": not self.explicit}


def cold_cutoff(today: date, years: int) -> date:
    """The first day still within a term of ``years`` counted back from ``today``.

    Events persisted on an earlier UTC day are past the term. 29 February counts back to 28
    February in a year without one.
    """
    year = today.year - years
    try:
        return today.replace(year=year)
    except ValueError:
        return today.replace(year=year, day=28)


@dataclass(frozen=True)
class Tombstone:
    """One removal record as signed."""

    number: int
    kind: str
    tenant_id: str
    created_at: datetime
    key_id: str
    actor: str
    removed: Mapping[str, int]
    runs: Sequence[Mapping[str, Any]] = field(default_factory=list)
    checkpoints: Mapping[str, Any] | None = None

    def payload(self) -> bytes:
        """The exact bytes the signature covers (canonical JSON)."""
        data: dict[str, Any] = {
            "version": TOMBSTONE_VERSION, "tombstone": self.number, "kind": self.kind,
            "tenantId": self.tenant_id, "createdAt": persisted_text(self.created_at),
            "keyId": self.key_id, "actor": self.actor, "removed": dict(self.removed)}
        if self.runs:
            data["runs"] = [dict(r) for r in self.runs]
        if self.checkpoints is not None:
            data["checkpoints"] = dict(self.checkpoints)
        return canonical_json(data)


def tombstone_summary(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What verify reports of a good tombstone (no run ids: a purge keeps none)."""
    return {"tombstone": payload["tombstone"], "kind": payload["kind"],
            "tenantId": payload["tenantId"], "at": payload["createdAt"],
            "keyId": payload["keyId"], "actor": payload.get("actor", ""),
            "removed": payload.get("removed", {}), "signature": "valid"}


def expired_heads(payload: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
    """The heads (seq, chain hash) a retention tombstone records, by run id."""
    return {r["runId"]: (int(r["seq"]), str(r["chainHash"])) for r in payload.get("runs", [])}


def without_tenant(payload_text: str, tenant_id: str, previous: str, key_id: str,
                   created_at: datetime) -> tuple[bytes, int]:
    """A checkpoint payload re-made without ``tenant_id``'s heads, linked to ``previous`` and
    under ``key_id``; with the number of heads dropped."""
    data = json.loads(payload_text)
    heads = heads_of(data)
    kept = [h for h in heads if h.tenant_id != tenant_id]
    return (checkpoint_payload(int(data["checkpoint"]), previous, key_id, created_at, kept),
            len(heads) - len(kept))


def names_tenant(payload_text: str, tenant_id: str) -> bool:
    """Whether a checkpoint signs a head of ``tenant_id``."""
    return any(h.tenant_id == tenant_id for h in heads_of(json.loads(payload_text)))
