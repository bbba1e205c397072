"""One interpreter per run, kept in step with the log instead of rebuilt for every move.

Rebuilding the shared RunInterpreter from the store's snapshot costs time in the plan's size, and
the coordinator needs one at every step (may this step start, what comes next): a run paid for
its plan's size at each of its steps. The cache keeps, per run, the interpreter as
``RunInterpreter.from_snapshot`` would build it at the run's last seen ``runSeq``. Asked again at
a later runSeq, it reads only the events since (whoever wrote them: this worker, another worker,
a signal) and re-derives just the steps those events name, by the same rule as
``from_snapshot``; the run-level fields are taken from the snapshot each time, as there.

An interpreter handed out is the cached one: the caller's moves change it (a StartStep marks a
step RUNNING before its worker writes StepStarted). Each step it changes is noted (through the
interpreter's own change hook) and re-derived from the log on the next use, so what the caller
did never outlives the reconcile that did it. A run whose log the fast path cannot follow (a
forEach expansion, a step that failed, a runSeq gone backwards) is rebuilt in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dvt_engine.interpreter import RunInterpreter, StepState
from dvt_engine.models.events import Event
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import RunStatus, StepStatus, StepSubstatus
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore
from dvt_engine.rules.failure import awaits_operator
from dvt_engine.rules.signals import is_gate
from dvt_engine.statemachine import RUN_AWAITING_OPERATOR

#: Runs whose interpreter one process keeps (the oldest is dropped beyond it).
DEFAULT_RUNS = 1000


class _Tracked(RunInterpreter):
    """An interpreter that notes which steps its moves changed."""

    def _observe(self, step_id: str, state: StepState) -> None:
        super()._observe(step_id, state)
        touched: set[str] | None = self.__dict__.get("_touched")
        if touched is not None:
            touched.add(step_id)


@dataclass
class _Entry:
    interp: _Tracked
    seq: int
    #: each step's position in the snapshot's step list (its order never changes without a
    #: forEach expansion, which is never cached)
    position: dict[str, int]
    operator_waits: int
    #: gate steps (approvals, signal waits): re-derived on every use (opening a gate changes
    #: no watched field)
    approvals: frozenset[str]
    touched: set[str] = field(default_factory=set)


@dataclass
class CacheStats:
    """How often the cache was used (hits), followed the log (refreshes) or rebuilt."""

    hits: int = 0
    refreshes: int = 0
    rebuilds: int = 0


class InterpreterCache:
    """The interpreters of the runs this process works on (see the module docstring)."""

    def __init__(self, store: RunStateStore, runs: int = DEFAULT_RUNS) -> None:
        self.store = store
        self.runs = runs
        self.stats = CacheStats()
        self._entries: dict[tuple[str, str], _Entry] = {}

    def forget(self, key: tuple[str, str]) -> None:
        """Drop a run's interpreter (the next use rebuilds it)."""
        self._entries.pop(key, None)

    async def get(
        self, key: tuple[str, str], plan: ExecutionPlan, snap: RunSnapshot,
        events: Sequence[Event] | None, run_params: dict[str, Any],
    ) -> RunInterpreter:
        """The run's interpreter as ``from_snapshot(plan, snap, log)`` builds it.

        ``events`` is the run's whole log when the caller has read it anyway (it is then used
        for a rebuild), else None (read only when a rebuild needs it).
        """
        entry = self._entries.get(key)
        if entry is not None and entry.interp.plan is plan \
                and snap.last_event_seq >= entry.seq \
                and await self._follow(key, entry, snap, events):
            return entry.interp
        return await self._rebuild(key, plan, snap, events, run_params)

    async def _rebuild(
        self, key: tuple[str, str], plan: ExecutionPlan, snap: RunSnapshot,
        events: Sequence[Event] | None, run_params: dict[str, Any],
    ) -> RunInterpreter:
        self.stats.rebuilds += 1
        self._entries.pop(key, None)
        if events is None and _needs_log(plan):
            events = await self.store.fetch_events(*key)
        log = list(events or ())
        interp = _Tracked.from_snapshot(plan, snap, log, run_params=run_params)
        assert isinstance(interp, _Tracked)
        if not _cacheable(plan, snap):
            return interp
        entry = _Entry(interp, snap.last_event_seq,
                       {s.step_id: i for i, s in enumerate(snap.steps)},
                       interp.operator_ordinal,
                       frozenset(s.step_id for s in plan.steps if is_gate(s)))
        interp.__dict__["_touched"] = entry.touched
        if len(self._entries) >= self.runs:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = entry
        return interp

    async def _follow(self, key: tuple[str, str], entry: _Entry, snap: RunSnapshot,
                      events: Sequence[Event] | None) -> bool:
        """Bring a cached interpreter to ``snap``; False when only a rebuild can."""
        if snap.last_event_seq == entry.seq and not entry.touched:
            self.stats.hits += 1
            self._run_fields(entry, snap)
            return True
        if snap.last_event_seq == entry.seq:
            new: list[Event] = []
        elif events is not None:
            new = [e for e in events if entry.seq < (e.run_seq or 0) <= snap.last_event_seq]
        else:
            new = [e for e in await self.store.fetch_events(*key, after_seq=entry.seq)
                   if (e.run_seq or 0) <= snap.last_event_seq]
        names = {e.step_id for e in new if e.step_id is not None} | entry.touched \
            | entry.approvals
        for step_id in names:
            at = entry.position.get(step_id)
            if at is None or at >= len(snap.steps) or snap.steps[at].step_id != step_id \
                    or snap.steps[at].status == StepStatus.FAILED:
                self.forget(key)  # a failed step sets ``failure``: rebuilt in full
                return False
        interp = entry.interp
        # Re-deriving a step below reports to the hook again: stop noting while doing it.
        del interp.__dict__["_touched"]
        try:
            for step_id in names:
                step = snap.steps[entry.position[step_id]]
                interp.steps[step_id] = StepState(
                    status=step.status,
                    logical_attempt_id=step.logical_attempt_id,
                    in_flight=step.status == StepStatus.RUNNING,
                    awaiting_approval=step.substatus == StepSubstatus.AWAITING_APPROVAL,
                )
                if step.status == StepStatus.SUCCESS and interp.reads_output(step_id):
                    interp.outputs[step_id] = step.output
                else:
                    interp.outputs.pop(step_id, None)
        finally:
            entry.touched.clear()
            interp.__dict__["_touched"] = entry.touched
        entry.operator_waits += sum(1 for e in new if e.event_type == RUN_AWAITING_OPERATOR)
        entry.seq = snap.last_event_seq
        self._run_fields(entry, snap)
        self.stats.refreshes += 1
        return True

    @staticmethod
    def _run_fields(entry: _Entry, snap: RunSnapshot) -> None:
        """The run-level fields exactly as ``from_snapshot`` sets them (moves reset)."""
        interp = entry.interp
        interp.status = RunStatus.RUNNING if snap.status == RunStatus.APPROVED else snap.status
        interp.pause_ordinal = snap.pause_count
        interp.awaiting_operator = snap.substatus == "AWAITING_OPERATOR"
        interp.operator_ordinal = entry.operator_waits
        interp.cancel_reason = None
        interp.cancel_requested = False
        interp.cancel_in_flight_on_pause = False
        interp.paused_cancellations = set()
        interp.cancelled_losers = set()
        interp.failure = None


def _cacheable(plan: ExecutionPlan, snap: RunSnapshot) -> bool:
    """Whether the fast path follows this run: no forEach (its expansions change the plan),
    no failed step (``failure`` is the first failed step in plan order, which a failing run
    recomputes from the whole snapshot)."""
    if any(s.for_each is not None for s in plan.steps):
        return False
    return not any(s.status == StepStatus.FAILED for s in snap.steps)


def _needs_log(plan: ExecutionPlan) -> bool:
    """Whether a rebuild reads the log: operator waits are counted from it (their ordinals
    key RunAwaitingOperator), forEach expansions come from it."""
    return awaits_operator(plan) or any(s.for_each is not None for s in plan.steps)
