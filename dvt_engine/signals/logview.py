"""A run's log as the signal service reads it: every event up to runSeq N, and its projection.

The log is append-only, so a prefix read once never goes stale; it only falls behind. Each
decision reads just the new tail (``fetch_events(after_seq=N)``) and projects it onto the cached
snapshot, so a busy run costs one small read per decision, and the snapshot and the events the
decision rests on describe exactly the same runSeq N.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from dvt_engine.models.events import Event
from dvt_engine.models.run import RunHeader
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore
from dvt_engine.projector import apply, initial_snapshot

#: Runs whose log prefix is kept; the least recently decided run is dropped first.
CACHED_RUNS = 256


@dataclass
class LogView:
    """Events 1..last_seq of one run and the snapshot they project to."""

    snapshot: RunSnapshot
    events: list[Event] = field(default_factory=list)
    last_seq: int = 0

    def find(self, idempotency_key: str) -> Event | None:
        """The event stored under ``idempotency_key`` in this prefix, or None."""
        for event in reversed(self.events):
            if event.idempotency_key == idempotency_key:
                return event
        return None


class LogViews:
    """Per-run log prefixes of one process, brought up to date on demand."""

    def __init__(self, store: RunStateStore, size: int = CACHED_RUNS) -> None:
        self.store = store
        self.size = size
        self._views: OrderedDict[tuple[str, str], LogView] = OrderedDict()

    async def current(self, header: RunHeader) -> LogView:
        """The run's log up to its last contiguous runSeq, read from where it was left."""
        key = (header.tenant_id, header.run_id)
        view = self._views.pop(key, None) or LogView(initial_snapshot(header))
        fresh = await self.store.fetch_events(header.tenant_id, header.run_id,
                                              after_seq=view.last_seq)
        added: list[Event] = []
        for event in fresh:
            # Stop at a gap: a later runSeq may be visible before an earlier one commits.
            if event.run_seq != view.last_seq + len(added) + 1:
                break
            added.append(event)
        if added:
            view.events.extend(added)
            view.snapshot = apply(view.snapshot, added)
            view.last_seq += len(added)
        self._views[key] = view
        while len(self._views) > self.size:
            self._views.popitem(last=False)
        return view
