"""How runs and events look in responses, and the opaque run-list cursor."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from dvt_api.problems import ApiProblem, HttpCode, run_not_found
from dvt_engine.checksum import snapshot_checksum
from dvt_engine.models.events import Event
from dvt_engine.ports import RunStateStore


def event_document(event: Event) -> dict[str, Any]:
    """The stored envelope as JSON (with runSeq and persistedAt)."""
    doc: dict[str, Any] = event.model_dump(mode="json", by_alias=True)
    return doc


async def run_document(store: RunStateStore, tenant_id: str, run_id: str) -> dict[str, Any]:
    """The run's snapshot plus engine, checksum, createdAt and updatedAt; 404 when unseen."""
    header = await store.get_run(tenant_id, run_id)
    snapshot = await store.get_snapshot(tenant_id, run_id) if header else None
    if header is None or snapshot is None:
        raise run_not_found()
    doc: dict[str, Any] = snapshot.model_dump(mode="json", by_alias=True,
                                              exclude={"engine_run_ref"})
    updated = header.created_at
    if snapshot.last_event_seq:
        last = await store.fetch_events(tenant_id, run_id, after_seq=snapshot.last_event_seq - 1,
                                        limit=1)
        if last and last[0].persisted_at is not None:
            updated = max(updated, last[0].persisted_at)
    doc.update(engine=header.engine, labels=header.labels,
               planRef=header.plan_ref.model_dump(mode="json", by_alias=True),
               checksum=snapshot_checksum(snapshot),
               createdAt=header.created_at.isoformat(), updatedAt=updated.isoformat())
    return doc


def encode_cursor(created_at: datetime, run_id: str, filters: str) -> str:
    """An opaque cursor for the run after which the next page starts, for these filters."""
    raw = json.dumps([created_at.isoformat(), run_id, filters], separators=(",", ":"),
                     ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, filters: str) -> tuple[datetime, str]:
    """The keyset behind a cursor made for the same ``filters``; REQUEST_INVALID otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, run_id, made_for = json.loads(raw)
        when = datetime.fromisoformat(at)
        if not isinstance(run_id, str) or not isinstance(made_for, str) or when.tzinfo is None:
            raise ValueError(cursor)
    except (ValueError, TypeError) as exc:
        raise ApiProblem(422, HttpCode.REQUEST_INVALID, "the cursor is not one this API made",
                         errors=[{"path": "query/cursor", "message": "invalid cursor"}]
                         ) from exc
    if made_for != filters:
        # AIP-158: a page token belongs to one query; other filters would page through
        # another result set from a place it never had, silently skipping or repeating runs.
        raise ApiProblem(422, HttpCode.REQUEST_INVALID,
                         "the cursor was made for other filters; send the same status, planId,"
                         " label, createdAfter and createdBefore as the first page",
                         errors=[{"path": "query/cursor", "message": "cursor for other filters"}])
    return when, run_id
