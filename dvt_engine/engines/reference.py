"""The reference engine: executes plans in-process with asyncio.

It is the executable form of the contract and the oracle of the parity suite. Each run is a
driver task that feeds a RunInterpreter and carries out its commands; each logical attempt is a
task that calls the shared StepRunner, retrying with the step's exponential backoff. Independent
steps run concurrently. State lives in the store; a process restart loses runs in flight (use a
durable engine when that matters).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dvt_engine.engine_base import BaseEngine
from dvt_engine.errors import IllegalTransition, RunNotFound, StoreUnavailable
from dvt_engine.eventlog import EventFactory, RunView, RunWriter
from dvt_engine.interpreter import (
    CancelSteps,
    Command,
    ExpireGate,
    Finish,
    ResolveGate,
    RunInterpreter,
    StartStep,
    StartTimer,
    WriteRunEvent,
    WriteStepEvent,
)
from dvt_engine.models.events import EventType
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import (
    EngineRunRef,
    ReferenceRunRef,
    RunHeader,
    RunStatus,
    RunStatusSnapshot,
)
from dvt_engine.planning.capabilities import ENGINE_CAPABILITIES
from dvt_engine.rules.cancel import DEFAULT_CANCEL_REASON
from dvt_engine.signals.desired import accepted_signals
from dvt_engine.signals.service import AcceptedSignal
from dvt_engine.steps import CancelToken, StepInvocation, StepOutcome, StepRunner
from dvt_engine.waiting import settles_within

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
#: Waits between tries of a store operation while the store is unavailable (doubling).
STORE_RETRY_FIRST_S = 0.05
STORE_RETRY_MAX_S = 2.0


class ReferenceEngine(BaseEngine):
    """In-process engine; ``open_engine("reference", store=store)``."""

    name = "reference"
    capabilities = frozenset(ENGINE_CAPABILITIES["reference"])

    def __init__(self, store: Any, *, cancel_in_flight_on_pause: bool = False, **options: Any):
        super().__init__(store, **options)
        self.instance_id = uuid.uuid4().hex
        self.cancel_in_flight_on_pause = cancel_in_flight_on_pause
        self.runner = StepRunner(store, self.registry, secrets=self.secrets,
                                 artifacts=self.artifacts)
        self._drivers: dict[tuple[str | None, str], _RunDriver] = {}

    def run_ref_for(self, header: RunHeader) -> ReferenceRunRef:
        """Reference runs are named by this engine instance, the tenant and the dvt runId."""
        return ReferenceRunRef(instance_id=self.instance_id, run_id=header.run_id,
                               tenant_id=header.tenant_id)

    async def launch(self, header: RunHeader, plan: ExecutionPlan) -> EngineRunRef:
        """Start the run's driver task."""
        ref = self.run_ref_for(header)
        key = (header.tenant_id, header.run_id)
        if key in self._drivers:
            return ref
        driver = _RunDriver(self, header, plan, ref)
        self._drivers[key] = driver
        driver.task = asyncio.create_task(driver.main(), name=f"dvt-run-{header.run_id}")
        # A finished run's driver is dropped: a long-lived service would otherwise keep every
        # run it ever ran in memory (the service soak measured ~28 KiB a run).
        driver.task.add_done_callback(lambda _task: self._forget(key, driver))
        return ref

    def _forget(self, key: tuple[str | None, str], driver: _RunDriver) -> None:
        if self._drivers.get(key) is driver:
            del self._drivers[key]
            self.runner.views.pop((driver.header.tenant_id, driver.header.run_id), None)

    async def apply_signal(
        self, header: RunHeader, run_ref: EngineRunRef, accepted: AcceptedSignal
    ) -> None:
        """Queue an accepted signal for the run's driver."""
        key = (header.tenant_id, header.run_id)
        if await self._ended(key):
            return  # it ended while the signal was decided: nothing is left to act on
        self._driver(key).inbox.put_nowait(("signal", accepted))

    async def cancel_run(self, run_ref: EngineRunRef, reason: str | None = None) -> None:
        """Cooperative cancel: running steps are asked to stop, then RunCancelled."""
        key = _run_key(run_ref)
        if await self._ended(key):
            return
        self._driver(key).inbox.put_nowait(("cancel", reason))

    async def _ended(self, key: tuple[str | None, str]) -> bool:
        """No driver any more, and the store has the run in a terminal state."""
        if key in self._drivers or key[0] is None:
            return False
        snap = await self.store.get_snapshot(key[0], key[1])
        return snap is not None and snap.status.is_terminal

    async def get_run_status(self, run_ref: EngineRunRef) -> RunStatusSnapshot:
        """The driver's view of the run (the store's snapshot is the truth; a finished run's
        driver is gone, so the snapshot alone answers for it)."""
        key = _run_key(run_ref)
        if await self._ended(key):
            assert key[0] is not None
            snap = await self.store.get_snapshot(key[0], key[1])
            assert snap is not None
            return RunStatusSnapshot(run_id=key[1], status=snap.status,
                                     substatus=snap.substatus, started_at=snap.started_at,
                                     completed_at=snap.completed_at)
        driver = self._driver(key)
        snap = await self.store.get_snapshot(driver.header.tenant_id, driver.header.run_id)
        status = driver.interp.status if snap is None else snap.status
        return RunStatusSnapshot(
            run_id=driver.header.run_id,
            status=status,
            substatus=None if snap is None else snap.substatus,
            started_at=None if snap is None else snap.started_at,
            completed_at=None if snap is None else snap.completed_at,
        )

    async def wait_idle(self) -> None:
        """Wait until every run driver of this engine has finished."""
        tasks = [d.task for d in self._drivers.values() if d.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop every driver and step task of this engine."""
        for driver in list(self._drivers.values()):
            await driver.stop()
        self._drivers.clear()
        self.runner.views.clear()

    def _driver(self, key: tuple[str | None, str]) -> _RunDriver:
        driver = self._drivers.get(key)
        if driver is None and key[0] is None:
            # A reference recorded without its tenant: unambiguous only if one tenant has it.
            matches = [d for (_, run_id), d in self._drivers.items() if run_id == key[1]]
            driver = matches[0] if len(matches) == 1 else None
        if driver is None:
            raise RunNotFound("the run is not running on this engine",
                              details={"runId": key[1]})
        return driver


def _run_key(run_ref: EngineRunRef) -> tuple[str | None, str]:
    if not isinstance(run_ref, ReferenceRunRef):
        raise RunNotFound("not a reference engine run", details={"provider": run_ref.provider})
    return run_ref.tenant_id, run_ref.run_id


@dataclass
class _Gate:
    invocation: StepInvocation


@dataclass
class _RunDriver:
    engine: ReferenceEngine
    header: RunHeader
    plan: ExecutionPlan
    ref: ReferenceRunRef
    inbox: asyncio.Queue[tuple[Any, ...]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    steps: dict[str, tuple[asyncio.Task[None], CancelToken]] = field(default_factory=dict)
    gates: dict[str, _Gate] = field(default_factory=dict)
    timers: list[asyncio.Task[None]] = field(default_factory=list)
    #: runSeq of the last accepted signal applied: signals apply in decision order.
    signal_seq: int = 0
    #: Signals decided on a log that shows a step's final failure this driver has not handled
    #: yet, by that step; back in the inbox once it is (rules.failure.final_failures).
    held: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.interp = RunInterpreter(
            self.plan, cancel_in_flight_on_pause=self.engine.cancel_in_flight_on_pause,
            run_params=dict(self.header.params),
        )
        # The driver and its step attempts are the run's writers in this process: they share
        # one view of it, so no append reads the snapshot first (see RunView).
        view = RunView()
        self.engine.runner.views[(self.header.tenant_id, self.header.run_id)] = view
        self.writer = RunWriter(self.engine.store, self.header, view)
        self.factory = EventFactory(self.header, "engine", clock=self.engine.clock)

    async def main(self) -> None:
        started = self.factory.run_event(
            EventType.RUN_STARTED,
            {"engine": self.engine.name, "engineRunRef": self.ref.model_dump(mode="json")},
        )
        await _patiently(lambda: self.writer.append(started))
        await self.execute(self.interp.begin())
        while not self.interp.is_finished:
            message = await self.inbox.get()
            if message[0] == "signal":
                failed = self.interp.unseen_failure(message[1].failed_steps)
                if failed is not None:
                    self.held.setdefault(failed, []).append(message)
                    continue
                for accepted in await self._due_signals(message[1]):
                    await self.execute(self._apply(accepted))
                continue
            await self.execute(self.handle(message))
            if message[0] == "settled":
                # Behind what the failure itself caused (a cancelled gate's settlement).
                for held in self.held.pop(message[1], []):
                    self.inbox.put_nowait(held)
        for timer in self.timers:
            timer.cancel()

    def handle(self, message: tuple[Any, ...]) -> list[Command]:
        kind = message[0]
        if kind == "settled":
            _, step_id, attempt, status, error, output = message
            return self.interp.settle(step_id, attempt, status, error, output)
        if kind == "awaiting":
            return self.interp.step_awaiting_approval(message[1])
        if kind == "signal":
            return self._apply(message[1])
        if kind == "cancel":
            return self.interp.cancel(message[1])
        if kind == "timer":
            return self.interp.timer_fired(message[1])
        raise AssertionError(f"unknown driver message {kind!r}")

    def _apply(self, accepted: AcceptedSignal) -> list[Command]:
        return self.interp.signal_accepted(
            accepted.type, accepted.payload, signal_id=accepted.signal_id,
            actor_id=accepted.actor.id, attempt=accepted.logical_attempt_id,
        )

    async def _due_signals(self, accepted: AcceptedSignal) -> list[AcceptedSignal]:
        """The accepted signals up to this one not applied yet, in decision (runSeq) order.

        Two callers' signals reach the inbox in any order; the log has them in the order they
        were decided, and each was decided on the run as the earlier ones leave it.
        """
        if accepted.decision_run_seq <= self.signal_seq:
            return []  # already applied, with a later signal that was delivered first
        h = self.header
        events = await _patiently(lambda: self.engine.store.fetch_events(
            h.tenant_id, h.run_id, after_seq=self.signal_seq))
        due = accepted_signals(events, after_seq=self.signal_seq,
                               upto_seq=accepted.decision_run_seq)
        self.signal_seq = accepted.decision_run_seq
        return due if any(s.signal_id == accepted.signal_id for s in due) else [*due, accepted]

    async def execute(self, commands: list[Command]) -> None:
        for command in commands:
            await self._execute_one(command)

    async def _execute_one(self, command: Command) -> None:
        if isinstance(command, StartStep):
            token = CancelToken()
            task = asyncio.create_task(
                self._run_step(command.step_id, command.logical_attempt_id, token)
            )
            self.steps[command.step_id] = (task, token)
        elif isinstance(command, CancelSteps):
            for step_id in command.step_ids:
                await self._cancel_step(step_id, command.reason)
        elif isinstance(command, WriteStepEvent) and self.interp.is_cancelled_loser(
                command.step_id):
            event = self.factory.command_event(command)
            try:
                await _patiently(lambda: self.writer.append(event))
            except IllegalTransition:
                # The loser's attempt settled first: it keeps its outcome (in the inbox).
                await self.execute(self.interp.loser_skip_refused(command.step_id))
        elif isinstance(command, WriteRunEvent | WriteStepEvent | Finish):
            event = self.factory.command_event(command)
            await _patiently(lambda: self.writer.append(event))
        elif isinstance(command, ResolveGate):
            gate = self.gates.pop(command.step_id, None)
            if gate is None:
                return  # being cancelled: that settlement reaches the interpreter instead
            opened = gate.invocation
            outcome = await _patiently(lambda: self.engine.runner.complete_gate(
                opened, approve=command.approve, approver=command.approver,
                comment=command.comment, signal_id=command.signal_id, output=command.output,
            ))
            self._settle(command.step_id, command.logical_attempt_id, outcome)
        elif isinstance(command, ExpireGate):
            gate = self.gates.pop(command.step_id, None)
            if gate is None:
                return
            outcome = await _patiently(lambda: self.engine.runner.expire_gate(gate.invocation))
            self._settle(command.step_id, command.logical_attempt_id, outcome)
        elif isinstance(command, StartTimer):
            self.timers.append(asyncio.create_task(self._timer(command.name, command.delay_ms)))

    def _invocation(self, step_id: str, attempt: int, engine_attempt: int) -> StepInvocation:
        h = self.header
        return StepInvocation(
            tenant_id=h.tenant_id, project_id=h.project_id, environment_id=h.environment_id,
            run_id=h.run_id, plan_id=h.plan_id, plan_version=h.plan_version,
            step=self.interp.spec(step_id), plan_params={**self.plan.params, **h.params},
            logical_attempt_id=attempt, engine_attempt_id=engine_attempt,
        )

    async def _run_step(self, step_id: str, attempt: int, token: CancelToken) -> None:
        engine_attempt = 1
        while True:
            invocation = self._invocation(step_id, attempt, engine_attempt)
            outcome = await _patiently(
                functools.partial(self.engine.runner.run, invocation, cancel=token))
            if outcome.status == "retry":
                delay = (outcome.retry_delay_ms or 0) / 1000
                if await _cancelled_within(token, delay):
                    outcome = await _patiently(functools.partial(
                        self.engine.runner.cancel_step, invocation,
                        reason=DEFAULT_CANCEL_REASON))
                else:
                    engine_attempt += 1
                    continue
            if outcome.status == "awaiting_approval":
                if token.cancelled:
                    outcome = await _patiently(functools.partial(
                        self.engine.runner.cancel_step, invocation,
                        reason=DEFAULT_CANCEL_REASON))
                else:
                    self.gates[step_id] = _Gate(invocation)
                    self.inbox.put_nowait(("awaiting", step_id))
                    return
            self._settle(step_id, attempt, outcome)
            return

    def _settle(self, step_id: str, attempt: int, outcome: StepOutcome) -> None:
        # The interpreter maps the runner's outcome to a settlement (rules.settlement).
        self.inbox.put_nowait(("settled", step_id, attempt, outcome.status, outcome.error,
                               outcome.output))

    async def _cancel_step(self, step_id: str, reason: str) -> None:
        gate = self.gates.pop(step_id, None)
        if gate is not None:
            outcome = await _patiently(
                lambda: self.engine.runner.cancel_step(gate.invocation, reason=reason))
            self._settle(step_id, gate.invocation.logical_attempt_id, outcome)
            return
        running = self.steps.get(step_id)
        if running is not None:
            running[1].cancel(reason)

    async def _timer(self, name: str, delay_ms: int) -> None:
        await asyncio.sleep(delay_ms / 1000)
        self.inbox.put_nowait(("timer", name))

    async def stop(self) -> None:
        tasks = [t for t, _ in self.steps.values()] + self.timers
        if self.task is not None:
            tasks.append(self.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _patiently(operation: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``operation`` until the store answers, waiting while it is unavailable.

    The reference engine has no server to redeliver work after a failure, so for a store outage
    it does what a durable engine's activity retry does: wait and try again. Every write on this
    path is idempotent or conditional on the run's runSeq, so a write whose answer was lost is
    found on the next try, never repeated; without this, one failed append left the run RUNNING
    for ever with its driver gone.
    """
    delay = STORE_RETRY_FIRST_S
    while True:
        try:
            return await operation()
        except StoreUnavailable as exc:
            _log.warning("store unavailable; the run's driver tries again in %.2fs", delay,
                         extra={"code": str(exc.code)})
        await asyncio.sleep(delay)
        delay = min(delay * 2, STORE_RETRY_MAX_S)


async def _cancelled_within(token: CancelToken, seconds: float) -> bool:
    """Wait up to ``seconds``; True as soon as the token is cancelled."""
    if token.cancelled:
        return True
    return await settles_within(token.wait(), seconds)


__all__ = ["ReferenceEngine", "RunStatus"]
