"""Building events with their idempotency keys, and appending them through the state machine."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dvt_engine import telemetry
from dvt_engine.commands import Finish, WriteRunEvent, WriteStepEvent
from dvt_engine.errors import IllegalTransition, RunNotFound
from dvt_engine.idempotency import event_key
from dvt_engine.identity import RunIdentity
from dvt_engine.models.events import AppendResult, Event
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore
from dvt_engine.projector import Projection
from dvt_engine.secret_scan import redact_secrets
from dvt_engine.statemachine import transition_problem


def utc_now() -> datetime:
    """The producer clock: timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class EventFactory:
    """Builds envelopes for one run; every event gets its contract idempotency key."""

    header: RunIdentity
    emitted_by: str
    clock: Callable[[], datetime] = utc_now

    def _event(
        self,
        event_type: str,
        key: str,
        payload: Mapping[str, Any],
        *,
        step_id: str | None = None,
        logical_attempt_id: int = 1,
        engine_attempt_id: int = 1,
        caused_by_signal_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Event:
        h = self.header
        return Event(
            event_id=str(uuid.uuid4()),
            event_type=event_type,
            tenant_id=h.tenant_id,
            project_id=h.project_id,
            environment_id=h.environment_id,
            run_id=h.run_id,
            step_id=step_id,
            plan_id=h.plan_id,
            plan_version=h.plan_version,
            logical_attempt_id=logical_attempt_id,
            engine_attempt_id=engine_attempt_id,
            idempotency_key=key,
            emitted_at=self.clock(),
            emitted_by=self.emitted_by,
            occurred_at=occurred_at,
            caused_by_signal_id=caused_by_signal_id,
            # A second line of defence: plans are refused with secret literals, but handler
            # outputs and error texts could still carry one.
            payload=redact_secrets(dict(payload)),
        )

    def run_event(
        self,
        event_type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        discriminator: int | None = None,
        caused_by_signal_id: str | None = None,
    ) -> Event:
        """A run-level event; ``discriminator`` fills the attempt slot of repeatable events."""
        key = event_key(self.header.run_id, None, discriminator, event_type,
                        self.header.plan_version)
        return self._event(event_type, key, payload or {}, caused_by_signal_id=caused_by_signal_id)

    def step_event(
        self,
        event_type: str,
        step_id: str,
        payload: Mapping[str, Any] | None = None,
        *,
        logical_attempt_id: int = 1,
        engine_attempt_id: int = 1,
        caused_by_signal_id: str | None = None,
    ) -> Event:
        """A step event of one logical attempt (engine attempts share its key)."""
        key = event_key(self.header.run_id, step_id, logical_attempt_id, event_type,
                        self.header.plan_version)
        return self._event(
            event_type,
            key,
            payload or {},
            step_id=step_id,
            logical_attempt_id=logical_attempt_id,
            engine_attempt_id=engine_attempt_id,
            caused_by_signal_id=caused_by_signal_id,
        )

    def command_event(self, command: WriteRunEvent | WriteStepEvent | Finish) -> Event:
        """The event an interpreter command asks the engine to write."""
        if isinstance(command, WriteStepEvent):
            return self.step_event(command.event_type, command.step_id, command.payload,
                                   logical_attempt_id=command.logical_attempt_id,
                                   caused_by_signal_id=command.caused_by_signal_id)
        if isinstance(command, WriteRunEvent):
            return self.run_event(command.event_type, command.payload,
                                  discriminator=command.discriminator,
                                  caused_by_signal_id=command.caused_by_signal_id)
        return self.run_event(command.event_type, command.payload)

    def signal_event(
        self, event_type: str, signal_key: str, payload: Mapping[str, Any]
    ) -> Event:
        """A decision record (SignalAccepted/SignalRejected): its key is the signal key."""
        signal_id = payload.get("signalId")
        return self._event(
            event_type,
            signal_key,
            payload,
            caused_by_signal_id=signal_id if isinstance(signal_id, str) else None,
        )


#: How many times a writer reads the run again after finding its view stale before it falls
#: back to checking a fresh snapshot and appending unconditionally (the pre-view behaviour).
_STALE_READS = 20


class RunView:
    """One process's view of a run: its snapshot at the last runSeq this process knows.

    Shared by every writer of the run in the process (a run's driver and its step attempts), so
    an append needs no read of the snapshot first. The view is only a guess: each append goes
    through ``append_if_last`` at the view's runSeq, so the store's per-run sequence still
    decides, and a view another writer made stale is read again from the store.
    """

    def __init__(self) -> None:
        self.projection: Projection | None = None
        # Writers of the run in this process take turns, so they never make each other stale.
        self.lock = asyncio.Lock()


class RunWriter:
    """Appends a run's events, refusing any transition the state machine forbids.

    A retried append of an event that is already in the log is answered as a duplicate even
    though, by then, the transition would no longer be legal. With a shared ``view`` the
    transition is checked against the view and the append is conditional on the view's runSeq
    (check and append are then atomic); without one, the snapshot is read before each append.
    """

    def __init__(self, store: RunStateStore, header: RunIdentity,
                 view: RunView | None = None) -> None:
        self.store = store
        self.header = header
        self.view = view

    async def append(self, event: Event) -> AppendResult:
        """Append ``event`` if its transition is legal; ILLEGAL_TRANSITION otherwise."""
        with telemetry.append_span(event) as span:
            if self.view is None:
                result = await self._append(event)
            else:
                async with self.view.lock:
                    result = await self._append_viewed(event, self.view)
            span.set_attribute(telemetry.ATTR_RUN_SEQ, result.run_seq)
            span.set_attribute(telemetry.ATTR_DUPLICATE, result.duplicate)
            return result

    async def _snapshot(self) -> RunSnapshot:
        snapshot = await self.store.get_snapshot(self.header.tenant_id, self.header.run_id)
        if snapshot is None:
            raise RunNotFound(f"run {self.header.run_id!r} is not registered",
                              details={"runId": self.header.run_id})
        return snapshot

    async def _append(self, event: Event) -> AppendResult:
        snapshot = await self._snapshot()
        problem = transition_problem(snapshot, event)
        if problem is None:
            return await self.store.append(event)
        return await self._refused(event, snapshot, problem)

    async def _append_viewed(self, event: Event, view: RunView) -> AppendResult:
        for _ in range(_STALE_READS):
            fresh = view.projection is None
            if view.projection is None:
                view.projection = Projection(await self._snapshot())
            projection = view.projection
            snapshot = projection.snapshot()
            problem = transition_problem(snapshot, event)
            if problem is not None:
                if fresh:
                    return await self._refused(event, snapshot, problem)
                view.projection = None  # decided on the store's snapshot, not on a guess
                continue
            result = await self.store.append_if_last(event, projection.last_event_seq)
            if result is None:
                view.projection = None  # another writer appended: read the run again
                continue
            if not result.duplicate:
                projection.fold([event.model_copy(update={
                    "run_seq": result.run_seq, "persisted_at": result.persisted_at})])
            return result
        view.projection = None
        return await self._append(event)

    async def _refused(self, event: Event, snapshot: RunSnapshot, problem: str) -> AppendResult:
        """A duplicate if the key is stored already; ILLEGAL_TRANSITION otherwise."""
        existing = await self.store.get_event_by_key(
            self.header.tenant_id, self.header.run_id, event.idempotency_key
        )
        if existing is not None and existing.run_seq is not None and existing.persisted_at:
            return AppendResult(
                run_seq=existing.run_seq,
                persisted_at=existing.persisted_at,
                event_id=existing.event_id,
                duplicate=True,
            )
        raise IllegalTransition(
            problem,
            details={"runId": event.run_id, "stepId": event.step_id,
                     "eventType": event.event_type, "runStatus": str(snapshot.status)},
        )
