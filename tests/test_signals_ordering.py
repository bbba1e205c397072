"""Signals decided on the truth: random interleavings against a model of the run's states.

Hypothesis draws batches of PAUSE, RESUME, CANCEL and gate decisions; each batch is sent at
once (the signals race), the batches one after the other. Every decision in the log, read in
runSeq order, must be what the model of the run's state machine says for the run as the earlier
decisions leave it, and the engine must end where the model ends. The reference engine on the
memory store: fast enough for many examples.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract_tests.engine_harness import (
    APPROVER,
    OPERATOR,
    EngineHarness,
    EngineSuiteBase,
    HarnessCapabilities,
    Started,
    plan_document,
)
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.interpreter import RunInterpreter, StartStep
from dvt_engine.models.events import Event
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import RunStatus
from dvt_engine.models.signals import Actor, SignalType
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.stores.memory import MemoryRunStateStore

PLAN = plan_document("ordering", [
    {"stepId": "long", "kind": "sleep", "params": {"ms": 600_000}},
    {"stepId": "gate", "kind": "approval"},
])

SIGNALS: dict[str, tuple[SignalType, Actor, dict[str, str]]] = {
    "pause": (SignalType.PAUSE, OPERATOR, {}),
    "resume": (SignalType.RESUME, OPERATOR, {}),
    "cancel": (SignalType.CANCEL, OPERATOR, {}),
    "approve": (SignalType.APPROVE_STEP, APPROVER, {"stepId": "gate", "decision": "approve"}),
    "reject": (SignalType.APPROVE_STEP, APPROVER, {"stepId": "gate", "decision": "reject"}),
}
batches = st.lists(
    st.lists(st.sampled_from(sorted(SIGNALS)), min_size=1, max_size=4), min_size=1, max_size=6
)


@dataclass
class RunModel:
    """The run's state machine as far as these signals see it."""

    status: RunStatus = RunStatus.RUNNING
    cancelling: bool = False
    gate_waiting: bool = True
    effects: dict[str, str] = field(default_factory=dict)  # signalId -> expected effect

    def decide(self, record: Event) -> None:
        """Check one decision record against the model, then apply it."""
        body = record.payload
        kind, accepted = body["signalType"], record.event_type == "SignalAccepted"
        no_op, code = bool(body.get("noOp")), body.get("errorCode")
        where = (record.run_seq, kind, accepted, no_op, code, self)
        if self.cancelling:
            if kind == "CANCEL":
                assert (accepted and no_op) or code == "RUN_TERMINAL", where
            else:
                assert (accepted, code) == (False, "RUN_TERMINAL"), where
            return
        if kind in ("PAUSE", "RESUME"):
            target = RunStatus.PAUSED if kind == "PAUSE" else RunStatus.RUNNING
            assert accepted, where
            assert no_op == (self.status == target), where
            if not no_op:
                self.effects[body["signalId"]] = "RunPaused" if kind == "PAUSE" else "RunResumed"
            self.status = target
        elif kind == "CANCEL":
            assert (accepted, no_op) == (True, False), where
            self.cancelling = True
        else:
            if self.gate_waiting:
                assert (accepted, no_op) == (True, False), where
                self.gate_waiting = False
                self.effects[body["signalId"]] = "gate"
            else:
                assert (accepted, code) == (False, "STEP_NOT_AWAITING_APPROVAL"), where

    def reached(self, snap: RunSnapshot) -> bool:
        """True once the engine has applied every accepted signal the model holds."""
        if self.cancelling:
            return snap.status == RunStatus.CANCELLED
        pauses = sum(1 for e in self.effects.values() if e == "RunPaused")
        gate_waits = snap.step("gate").substatus == "AWAITING_APPROVAL"
        return (snap.status, snap.pause_count, gate_waits) == (self.status, pauses,
                                                               self.gate_waiting)


async def _scenario(rounds: list[list[str]]) -> None:
    store = MemoryRunStateStore()
    engine = ReferenceEngine(store, signal_rate_limit_per_minute=None)
    suite = EngineSuiteBase()
    try:
        run: Started = await suite.start(
            EngineHarness(engine, store, HarnessCapabilities(timeout=10.0)), PLAN)
        await run.wait(lambda s: s.step("gate").substatus == "AWAITING_APPROVAL", "gate waits")
        for batch in rounds:
            await asyncio.gather(*(run.signal(SIGNALS[n][0], SIGNALS[n][1], SIGNALS[n][2])
                                   for n in batch))
        model = RunModel()
        for record in await run.events():
            if record.event_type in ("SignalAccepted", "SignalRejected"):
                model.decide(record)
        await run.wait(model.reached, "every accepted signal applied")
        if not model.cancelling:
            log = await run.events()
            for signal_id, effect in model.effects.items():
                caused = [e.event_type for e in log if e.caused_by_signal_id == signal_id
                          and e.event_type not in ("SignalAccepted", "SignalRejected")]
                assert len(caused) == 1, (signal_id, effect, caused)
                if effect != "gate":
                    assert caused == [effect]
    finally:
        await engine.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=batches)
def test_random_signal_interleavings_follow_the_run_state_machine(
    rounds: list[list[str]],
) -> None:
    """Every decision is right for the run as the decisions before it leave it."""
    asyncio.run(_scenario(rounds))


def test_a_step_signal_for_an_attempt_the_step_has_left_is_ignored() -> None:
    """The interpreter applies RETRY_STEP only to the attempt it was decided for."""
    plan = ExecutionPlan.model_validate(plan_document(
        "held-retry", [{"stepId": "bad", "kind": "fail"}], failurePolicy="awaitOperator"))
    interp = RunInterpreter(plan)
    interp.begin()
    interp.settle("bad", 1, "failed")
    assert interp.signal_accepted(SignalType.RETRY_STEP, {"stepId": "bad"}, attempt=1)
    interp.settle("bad", 2, "failed")
    # A second retry decided for attempt 1 and applied late must not start attempt 3.
    assert interp.signal_accepted(SignalType.RETRY_STEP, {"stepId": "bad"}, attempt=1) == []
    assert interp.steps["bad"].logical_attempt_id == 2


def test_an_attempt_stopped_before_it_began_keeps_its_number() -> None:
    """A pause that cancels an attempt no worker took yet: the rerun is the same attempt, so
    the log's attempts stay consecutive (the store refuses a gap)."""
    plan = ExecutionPlan.model_validate(plan_document(
        "unstarted", [{"stepId": "s", "kind": "noop"}]))
    interp = RunInterpreter(plan, cancel_in_flight_on_pause=True)
    assert interp.begin() == [StartStep("s", 1)]
    interp.signal_accepted(SignalType.PAUSE, {})
    assert interp.settle("s", 1, "not_started") == []
    assert interp.steps["s"].logical_attempt_id == 1
    resumed = interp.signal_accepted(SignalType.RESUME, {})
    assert StartStep("s", 1) in resumed
