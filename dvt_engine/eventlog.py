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
    """One process's view of a run: the store's run at its last runSeq, plus held events.

    Shared by every writer of the run in the process (a run's driver and its step attempts), so
    an append needs no read of the snapshot first. The view is only a guess: each write goes
    through ``append_if_last`` (or ``append_batch_if_last``) at the runSeq the store confirmed,
    so the store's per-run sequence still decides, and a view another writer made stale is read
    again from the store.

    A writer may also *hold* an event (``RunWriter.hold``): it is checked against the view,
    folded into it, and written in one transaction with the run's next append, or by
    ``RunWriter.flush``. A step's StepStarted and StepCompleted then cost one commit.
    """

    def __init__(self) -> None:
        #: The store's run at ``confirmed_seq`` with ``pending`` folded on top; None: read it.
        self.projection: Projection | None = None
        self.confirmed_seq = 0
        self.pending: list[Event] = []
        #: The trace context each pending event was held in (by idempotency key), so its append
        #: span is recorded where the event was made, not inside the append that wrote it.
        self.held_in: dict[str, telemetry.TraceContext] = {}
        # Writers of the run in this process take turns, so they never make each other stale.
        self.lock = asyncio.Lock()

    def fold(self, event: Event, run_seq: int, persisted_at: datetime | None = None) -> None:
        """Fold ``event`` into the view at ``run_seq``."""
        assert self.projection is not None
        self.projection.fold([event.model_copy(update={"run_seq": run_seq,
                                                       "persisted_at": persisted_at})])


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
                    written = await self._write(self.view, event)
                    assert written is not None
                    result = written
            span.set_attribute(telemetry.ATTR_RUN_SEQ, result.run_seq)
            span.set_attribute(telemetry.ATTR_DUPLICATE, result.duplicate)
            return result

    async def hold(self, event: Event) -> bool:
        """Keep ``event`` to be written with the run's next append, if the view allows it now.

        False (nothing held) without a view or when the view refuses the transition: the
        caller then appends as usual and gets the store's answer.
        """
        view = self.view
        if view is None:
            return False
        async with view.lock:
            if view.projection is None:
                await self._reload(view)
            assert view.projection is not None
            if transition_problem(view.projection.snapshot(), event) is not None:
                return False
            view.fold(event, view.projection.last_event_seq + 1)
            view.pending.append(event)
            view.held_in[event.idempotency_key] = telemetry.current_context()
            return True

    async def flush(self) -> None:
        """Write the held events of the run, if any."""
        view = self.view
        if view is None or not view.pending:
            return
        async with view.lock:
            if view.pending:
                await self._write(view, None)

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

    async def _reload(self, view: RunView) -> None:
        """Read the run from the store; held events it no longer allows are dropped."""
        snapshot = await self._snapshot()
        view.projection = Projection(snapshot)
        view.confirmed_seq = snapshot.last_event_seq
        held, view.pending = view.pending, []
        for event in held:
            # A held event the run refuses now (a signal from elsewhere ended it, say) is not
            # written: the attempt's next event is refused the same way and reports it.
            if transition_problem(view.projection.snapshot(), event) is None:
                view.fold(event, view.projection.last_event_seq + 1)
                view.pending.append(event)
            else:
                view.held_in.pop(event.idempotency_key, None)

    async def _write(self, view: RunView, event: Event | None) -> AppendResult | None:
        """Write the held events and ``event`` at the confirmed runSeq; ``event``'s result."""
        for _ in range(_STALE_READS):
            fresh = view.projection is None
            if view.projection is None:
                await self._reload(view)
            projection = view.projection
            assert projection is not None
            batch = list(view.pending)
            snapshot = projection.snapshot()
            problem = None if event is None else transition_problem(snapshot, event)
            if problem is not None and not fresh:
                view.projection = None  # decided on the store's snapshot, not on a guess
                continue
            if event is not None and problem is None:
                batch.append(event)
            results = await self._append_at(batch, view.confirmed_seq) if batch else []
            if results is None:
                view.projection = None  # another writer appended: read the run again
                continue
            held = len(view.pending)
            view.pending = []
            if any(r.duplicate for r in results):
                view.projection = None  # runSeqs were not the ones folded: read it again
            elif results:
                view.confirmed_seq = results[-1].run_seq
                if len(results) > held:
                    view.fold(batch[-1], results[-1].run_seq, results[-1].persisted_at)
            _record_held(view, batch[:held], results[:held])
            if event is None:
                return None
            if problem is not None:
                return await self._refused(event, snapshot, problem)
            return results[-1]
        # The run is being appended to by others all the time: decide as without a view.
        view.projection = None
        waiting, view.pending = view.pending, []
        view.held_in.clear()
        if waiting:
            await self.store.append_batch(waiting)
        return None if event is None else await self._append(event)

    async def _append_at(self, events: list[Event], last_seq: int) -> list[AppendResult] | None:
        if len(events) == 1:
            result = await self.store.append_if_last(events[0], last_seq)
            return None if result is None else [result]
        return await self.store.append_batch_if_last(events, last_seq)

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


def _record_held(view: RunView, events: list[Event], results: list[AppendResult]) -> None:
    # A held event is written with a later one; its span is recorded once its runSeq is known,
    # in the context it was held in (a step's span), beside the append that wrote it.
    for event, result in zip(events, results, strict=True):
        parent = view.held_in.pop(event.idempotency_key, None)
        with telemetry.append_span(event, parent) as span:
            span.set_attribute(telemetry.ATTR_RUN_SEQ, result.run_seq)
            span.set_attribute(telemetry.ATTR_DUPLICATE, result.duplicate)
