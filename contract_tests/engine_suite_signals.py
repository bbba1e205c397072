"""Engine contract tests of the signal rules (contract §6.2): refusals, records, duplicates."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from contract_tests.engine_harness import (
    APPROVER,
    ENGINEER,
    OPERATOR,
    VIEWER,
    EngineHarness,
    EngineSuiteBase,
    Started,
    event_types,
    plan_document,
)
from dvt_engine.errors import DvtError, ErrorCode
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunStatus, StepStatus
from dvt_engine.models.signals import SignalDecision, SignalType


class SignalRuleTests(EngineSuiteBase):
    """Every engine decides signals the same way, through the shared signal service."""

    # --- signal rules (contract §6.2) ----------------------------------------------------
    async def test_invalid_payload_is_refused_first(self, engine_harness: EngineHarness) -> None:
        """Rule 1: a payload that fails its schema raises SIGNAL_INVALID_PAYLOAD, recorded nowhere,
        even from an actor with no role and for a run of another tenant."""
        run = await self.start_at_gate(engine_harness)
        before = len(await run.events())
        for kwargs in ({}, {"tenant_id": "other-tenant"}):
            with pytest.raises(DvtError) as info:
                await run.signal(SignalType.APPROVE_STEP, VIEWER,
                                 {"stepId": "gate", "decision": "maybe"}, **kwargs)
            assert info.value.code == ErrorCode.SIGNAL_INVALID_PAYLOAD
        assert len(await run.events()) == before
        await self.approve_gate(run)

    async def test_tenant_mismatch_looks_like_run_not_found(
        self, engine_harness: EngineHarness
    ) -> None:
        """Rule 2: another tenant's run answers exactly like a run that does not exist."""
        run = await self.start_at_gate(engine_harness)
        with pytest.raises(DvtError) as other_tenant:
            await run.signal(SignalType.PAUSE, OPERATOR, tenant_id="other-tenant")
        with pytest.raises(DvtError) as missing:
            await run.signal(SignalType.PAUSE, OPERATOR, tenant_id="other-tenant",
                             run_id="no-such-run")
        assert other_tenant.value.code == ErrorCode.RUN_NOT_FOUND
        assert missing.value.code == ErrorCode.RUN_NOT_FOUND
        assert str(other_tenant.value).replace(run.run_id, "X") == \
            str(missing.value).replace("no-such-run", "X")
        types = event_types(await run.events())
        assert "RunPaused" not in types
        assert "SignalAccepted" not in types
        assert "SignalRejected" not in types
        snap = await engine_harness.store.get_snapshot(run.tenant_id, run.run_id)
        assert snap is not None
        assert snap.status == RunStatus.RUNNING
        await self.approve_gate(run)

    async def test_unauthorized_signal_is_recorded_and_ignored(
        self, engine_harness: EngineHarness
    ) -> None:
        """Rule 3: an operator may not approve a gate; the refusal is on record."""
        run = await self.start_at_gate(engine_harness)
        decision = await run.signal(SignalType.APPROVE_STEP, OPERATOR,
                                    {"stepId": "gate", "decision": "approve"})
        assert decision.accepted is False
        assert decision.error_code == ErrorCode.SIGNAL_UNAUTHORIZED
        events = await run.events()
        rejected = [e for e in events if e.event_type == "SignalRejected"]
        assert [e.payload["errorCode"] for e in rejected] == ["SIGNAL_UNAUTHORIZED"]
        snap = await engine_harness.store.get_snapshot(run.tenant_id, run.run_id)
        assert snap is not None
        assert snap.step("gate").substatus == "AWAITING_APPROVAL"
        await self.approve_gate(run)

    async def test_terminal_run_refuses_everything(self, engine_harness: EngineHarness) -> None:
        """Rule 4: a COMPLETED run answers RUN_TERMINAL to every step and run signal."""
        run = await self.start(engine_harness, plan_document(
            "suite-terminal", [{"stepId": "a", "kind": "noop"}]))
        await run.finished()
        for type_, payload, actor in (
            (SignalType.PAUSE, {}, OPERATOR),
            (SignalType.RESUME, {}, OPERATOR),
            (SignalType.CANCEL, {}, OPERATOR),
            (SignalType.RETRY_STEP, {"stepId": "a"}, ENGINEER),
            (SignalType.SKIP_STEP, {"stepId": "a"}, ENGINEER),
        ):
            decision = await run.signal(type_, actor, payload)
            assert (decision.accepted, decision.error_code) == (False, ErrorCode.RUN_TERMINAL), \
                type_
        snap = await run.finished()
        assert snap.status == RunStatus.COMPLETED

    async def test_step_state_rules(self, engine_harness: EngineHarness) -> None:
        """Rule 4: RETRY_STEP needs a FAILED step, SKIP_STEP a step that has not run,
        APPROVE_STEP a waiting gate, and every step signal an existing step."""
        run = await self.start_at_gate(engine_harness)
        cases = [
            (SignalType.RETRY_STEP, {"stepId": "prepare"}, ENGINEER,
             ErrorCode.STEP_NOT_RETRYABLE),
            (SignalType.RETRY_STEP, {"stepId": "after"}, ENGINEER, ErrorCode.STEP_NOT_RETRYABLE),
            (SignalType.SKIP_STEP, {"stepId": "prepare"}, ENGINEER, ErrorCode.STEP_TERMINAL),
            (SignalType.SKIP_STEP, {"stepId": "gate"}, ENGINEER, ErrorCode.STEP_TERMINAL),
            (SignalType.SKIP_STEP, {"stepId": "nope"}, ENGINEER, ErrorCode.STEP_NOT_FOUND),
            (SignalType.APPROVE_STEP, {"stepId": "after", "decision": "approve"}, APPROVER,
             ErrorCode.STEP_NOT_AWAITING_APPROVAL),
        ]
        for type_, payload, actor, code in cases:
            decision = await run.signal(type_, actor, payload)
            assert (decision.accepted, decision.error_code) == (False, code), (type_, payload)
        await self.approve_gate(run)
        snap = await run.finished()
        assert snap.status == RunStatus.COMPLETED
        assert [s.status for s in snap.steps] == [StepStatus.SUCCESS] * 3

    async def test_duplicate_signal_id_gets_the_first_decision(
        self, engine_harness: EngineHarness
    ) -> None:
        """Rule 6: a repeated signalId is answered with the first decision and does nothing."""
        run = await self.start_at_gate(engine_harness)
        first = await run.signal(SignalType.PAUSE, OPERATOR, {"reason": "one"}, signal_id="p-1")
        await run.wait(lambda s: s.status == RunStatus.PAUSED, "paused")
        again = await run.signal(SignalType.PAUSE, OPERATOR, {"reason": "one"}, signal_id="p-1")
        # Even a different request under the same signalId gets the first answer.
        other = await run.signal(SignalType.RESUME, OPERATOR, signal_id="p-1")
        assert first.accepted is True
        assert first.duplicate is False
        for answer in (again, other):
            assert answer.duplicate is True
            assert (answer.accepted, answer.type, answer.run_seq) == \
                (first.accepted, first.type, first.run_seq)
        refused = await run.signal(SignalType.APPROVE_STEP, OPERATOR,
                                   {"stepId": "gate", "decision": "approve"}, signal_id="a-1")
        refused_again = await run.signal(SignalType.APPROVE_STEP, OPERATOR,
                                         {"stepId": "gate", "decision": "approve"},
                                         signal_id="a-1")
        assert refused_again.duplicate is True
        assert refused_again.error_code == refused.error_code == ErrorCode.SIGNAL_UNAUTHORIZED
        events = await run.events()
        assert event_types(events).count("RunPaused") == 1
        assert event_types(events).count("SignalAccepted") == 1
        assert event_types(events).count("SignalRejected") == 1
        await run.signal(SignalType.RESUME, OPERATOR, signal_id="r-1")
        await run.wait(lambda s: s.status == RunStatus.RUNNING, "resumed")
        await self.approve_gate(run)
        assert (await run.finished()).status == RunStatus.COMPLETED

    async def test_pause_and_resume_no_ops_and_record_before_effect(
        self, engine_harness: EngineHarness
    ) -> None:
        """Rules 4-5: PAUSE when paused and RESUME when running are accepted no-ops; every
        decision record precedes the event it causes."""
        run = await self.start_at_gate(engine_harness)
        noop_resume = await run.signal(SignalType.RESUME, OPERATOR)
        assert (noop_resume.accepted, noop_resume.no_op) == (True, True)
        pause = await run.signal(SignalType.PAUSE, OPERATOR, {"reason": "window"})
        assert (pause.accepted, pause.no_op) == (True, False)
        await run.wait(lambda s: s.status == RunStatus.PAUSED, "paused")
        noop_pause = await run.signal(SignalType.PAUSE, OPERATOR)
        assert (noop_pause.accepted, noop_pause.no_op) == (True, True)
        resume = await run.signal(SignalType.RESUME, OPERATOR)
        assert (resume.accepted, resume.no_op) == (True, False)
        await run.wait(lambda s: s.status == RunStatus.RUNNING, "resumed")
        await self.approve_gate(run)
        assert (await run.finished()).status == RunStatus.COMPLETED
        events = await run.events()
        seq = {e.event_type: e.run_seq for e in reversed(events)}  # first occurrence
        decisions = [e for e in events if e.event_type == "SignalAccepted"]
        by_type = {e.payload["signalType"]: e for e in decisions if not e.payload.get("noOp")}
        assert by_type["PAUSE"].run_seq < seq["RunPaused"]  # type: ignore[operator]
        assert by_type["RESUME"].run_seq < seq["RunResumed"]  # type: ignore[operator]
        assert event_types(events).count("RunPaused") == 1
        assert event_types(events).count("RunResumed") == 1

    async def test_unknown_run_is_not_found_and_status_is_diagnostic(
        self, engine_harness: EngineHarness
    ) -> None:
        """A signal to a run that does not exist: RUN_NOT_FOUND; get_run_status of a live run
        agrees with the store."""
        h = engine_harness
        run = await self.start_at_gate(h)
        with pytest.raises(DvtError) as info:
            await run.signal(SignalType.PAUSE, OPERATOR, run_id="no-such-run")
        assert info.value.code == ErrorCode.RUN_NOT_FOUND
        status = await h.engine.get_run_status(run.ref)
        assert status.run_id == run.run_id
        assert status.status == RunStatus.RUNNING
        await self.approve_gate(run)
        await run.finished()

    async def test_signal_rate_limit(self, engine_harness: EngineHarness) -> None:
        """With signals.rate.limit, the 61st signal within a minute is refused (not recorded);
        a repeated signalId is still answered. Without it, every signal is decided."""
        from dvt_engine.planning.capabilities import SIGNALS_RATE_LIMIT

        h = engine_harness
        declared = frozenset(getattr(h.engine, "declared_capabilities",
                                     lambda: h.engine.capabilities)())
        run = await self.start(h, plan_document("suite-rate", [
            {"stepId": "long", "kind": "sleep", "params": {"ms": 60_000}},
        ]))
        await run.wait(lambda s: s.step("long").status == StepStatus.RUNNING, "long runs")
        answers = [await run.signal(SignalType.RESUME, OPERATOR, signal_id=f"r-{i}")
                   for i in range(61)]
        assert all(a.accepted and a.no_op for a in answers[:60])
        repeated = await run.signal(SignalType.RESUME, OPERATOR, signal_id="r-0")
        assert repeated.duplicate is True
        events = await run.events()
        if SIGNALS_RATE_LIMIT in declared:
            assert (answers[60].accepted, answers[60].error_code) == (
                False, ErrorCode.SIGNAL_RATE_LIMITED)
            assert event_types(events).count("SignalAccepted") == 60
        else:
            assert answers[60].accepted
            assert event_types(events).count("SignalAccepted") == 61
        await h.engine.cancel_run(run.ref, "done")
        assert (await run.finished()).status == RunStatus.CANCELLED


    # --- decision order (contract §6.2, "Signals are decided on the truth") ---------------
    async def test_pause_then_resume_from_one_client_ends_running(
        self, engine_harness: EngineHarness
    ) -> None:
        """PAUSE, then (after its answer) RESUME from one client: both change the run, ten times
        over, and the run ends RUNNING; RESUME is never a stale "already running"."""
        run = await self.start(engine_harness, LONG_PLAN)
        await run.wait(lambda s: s.step("long").status == StepStatus.RUNNING, "long runs")
        for i in range(10):
            pause = await run.signal(SignalType.PAUSE, OPERATOR, signal_id=f"p-{i}")
            resume = await run.signal(SignalType.RESUME, OPERATOR, signal_id=f"r-{i}")
            assert (pause.accepted, pause.no_op) == (True, False), (i, pause)
            assert (resume.accepted, resume.no_op) == (True, False), (i, resume)
        snap = await run.wait(
            lambda s: s.status == RunStatus.RUNNING and s.pause_count == 10, "resumed 10 times")
        assert snap.status == RunStatus.RUNNING
        types = event_types(await run.events())
        assert (types.count("RunPaused"), types.count("RunResumed")) == (10, 10)
        await engine_harness.engine.cancel_run(run.ref, "done")
        assert (await run.finished()).status == RunStatus.CANCELLED

    async def test_approve_racing_reject_on_one_gate_accepts_exactly_one(
        self, engine_harness: EngineHarness
    ) -> None:
        """APPROVE and REJECT of one gate at once: one is accepted, the other is refused with
        STEP_NOT_AWAITING_APPROVAL, and the gate ends as the accepted one says. (A long step
        keeps the run alive, so the second decision never meets a run the first one ended.)"""
        for _ in range(3):
            run = await self.start(engine_harness, GATE_AND_LONG_PLAN)
            await run.wait(lambda s: s.step("gate").substatus == "AWAITING_APPROVAL",
                           "gate waits")
            answers = await asyncio.gather(*(
                run.signal(SignalType.APPROVE_STEP, APPROVER, {"stepId": "gate", "decision": d})
                for d in ("approve", "reject")))
            accepted = [a for a in answers if a.accepted]
            refused = [a for a in answers if not a.accepted]
            assert (len(accepted), len(refused)) == (1, 1), answers
            assert refused[0].error_code == ErrorCode.STEP_NOT_AWAITING_APPROVAL
            assert not accepted[0].no_op
            approved = accepted[0] is answers[0]
            snap = await run.wait(lambda s: s.step("gate").status in _DECIDED, "gate decided")
            assert snap.step("gate").status == \
                (StepStatus.SUCCESS if approved else StepStatus.FAILED)
            gate = [e for e in await run.events() if e.step_id == "gate"
                    and e.event_type in ("StepCompleted", "StepFailed")]
            assert [e.caused_by_signal_id for e in gate] == [accepted[0].signal_id]
            await engine_harness.engine.cancel_run(run.ref, "done")
            await run.finished()

    async def test_two_custom_signals_racing_for_one_wait_complete_it_once(
        self, engine_harness: EngineHarness
    ) -> None:
        """Two CUSTOM signals for one wait at once (plan v1.3): one is accepted and its data
        is the step's output, the other is refused with SIGNAL_NOT_AWAITED; an undeclared name
        raises SIGNAL_UNKNOWN and records nothing."""
        run = await self.start(engine_harness, WAIT_AND_LONG_PLAN)
        await run.wait(lambda s: s.step("wait").substatus == "AWAITING_APPROVAL", "wait opens")
        with pytest.raises(DvtError) as unknown:
            await run.signal(SignalType.CUSTOM, OPERATOR, {"name": "nope", "data": {}})
        assert unknown.value.code == ErrorCode.SIGNAL_UNKNOWN
        answers = await asyncio.gather(*(
            run.signal(SignalType.CUSTOM, OPERATOR, {"name": "go", "data": {"n": n}})
            for n in (1, 2)))
        accepted = [a for a in answers if a.accepted]
        refused = [a for a in answers if not a.accepted]
        assert (len(accepted), len(refused)) == (1, 1), answers
        assert refused[0].error_code == ErrorCode.SIGNAL_NOT_AWAITED
        winner = 1 if accepted[0] is answers[0] else 2
        snap = await run.wait(lambda s: s.step("wait").status == StepStatus.SUCCESS, "wait done")
        assert snap.step("wait").output == {"n": winner}
        await engine_harness.engine.cancel_run(run.ref, "done")
        await run.finished()
        decided = [e.payload["errorCode"] for e in await run.events()
                   if e.event_type in ("SignalAccepted", "SignalRejected")]
        assert sorted(decided, key=str) == sorted([None, "SIGNAL_NOT_AWAITED"], key=str)

    async def test_two_concurrent_retries_of_a_failed_step_start_one_attempt(
        self, engine_harness: EngineHarness
    ) -> None:
        """Two RETRY_STEP at once on a FAILED step: one is accepted, the other refused with
        STEP_NOT_RETRYABLE, and exactly one new attempt starts, on every engine.

        The new attempt fails at once too, so a second signal that reaches the engine only
        after that (a slow machine) retries a new failure, rightly: then each accepted retry
        must have its own failed attempt, decided between that failure and the next start.
        """
        run = await self.start(engine_harness, plan_document(
            "suite-retry-race", [{"stepId": "bad", "kind": "fail", "params": {"retryable": False}}],
            failurePolicy="awaitOperator", operatorTimeoutMs=600_000))
        await run.wait(lambda s: s.substatus == "AWAITING_OPERATOR", "waits for an operator")
        answers = await asyncio.gather(*(
            run.signal(SignalType.RETRY_STEP, ENGINEER, {"stepId": "bad"}) for _ in range(2)))
        accepted = sorted(a.run_seq or 0 for a in answers if a.accepted)
        assert accepted, answers
        assert [a.error_code for a in answers if not a.accepted] == \
            [ErrorCode.STEP_NOT_RETRYABLE] * (2 - len(accepted))
        attempts = 1 + len(accepted)
        await run.wait(lambda s: s.step("bad").logical_attempt_id == attempts
                       and s.step("bad").status == StepStatus.FAILED
                       and s.substatus == "AWAITING_OPERATOR", f"attempt {attempts} failed")
        await engine_harness.engine.cancel_run(run.ref, "done")
        await run.finished()
        log = [e for e in await run.events() if e.step_id == "bad"]
        started = [e.logical_attempt_id for e in log if e.event_type == "StepStarted"]
        assert started == list(range(1, attempts + 1))
        failed = [e.run_seq or 0 for e in log if e.event_type == "StepFailed"]
        starts = [e.run_seq or 0 for e in log if e.event_type == "StepStarted"]
        for i, decided in enumerate(accepted):
            assert failed[i] < decided < starts[i + 1], (failed, accepted, starts)

    async def test_signal_storm_leaves_every_run_as_its_last_accepted_signal_says(
        self, engine_harness: EngineHarness
    ) -> None:
        """About 100 PAUSE/RESUME a second from two clients per run over many runs: every
        accepted signal has its effect, every no-op is true when decided, and each run ends in
        the state its last accepted signal asks for (size: DVT_SIGNAL_STORM_*)."""
        h = engine_harness
        size = StormSize.from_env()
        runs = [await self.start(h, LONG_PLAN) for _ in range(size.runs)]
        for run in runs:
            await run.wait(lambda s: s.status == RunStatus.RUNNING, "running")
        tally: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + size.seconds
        interval = 2 * size.runs / size.rate  # two clients per run

        async def client(run: Started, seed: int) -> None:
            rng = random.Random(seed)
            while loop.time() < deadline:
                kind = rng.choice((SignalType.PAUSE, SignalType.RESUME))
                answer = await run.signal(kind, OPERATOR)
                tally[_outcome(answer)] += 1
                await asyncio.sleep(interval)  # pacing the load, not waiting for a state

        await asyncio.gather(*(client(r, i * 2 + c) for i, r in enumerate(runs)
                               for c in range(2)))
        for run in runs:
            events = await run.events()
            wanted = _replay_pause_decisions(events)
            await run.wait(lambda s, w=wanted: s.status == w, f"{run.run_id} to be {wanted}")
            # The status can match while an accepted PAUSE and the RESUME after it are still
            # on their way to the engine: wait until every accepted signal has had its effect.
            events = await run.wait_for_log(
                lambda log: _accepted(log) <= set(_effects(log)),
                f"{run.run_id}: every accepted signal applied")
            effects = _effects(events)
            assert sorted(effects) == sorted(_accepted(events)), run.run_id  # each once
        print(f"signal storm on {h.engine.name}: {size} -> {dict(tally)}")
        assert tally["accepted"] > 0
        for run in runs:
            await h.engine.cancel_run(run.ref, "storm over")
        for run in runs:
            await run.finished()


LONG_PLAN = plan_document("suite-long", [
    {"stepId": "long", "kind": "sleep", "params": {"ms": 600_000}},
])
_DECIDED = (StepStatus.SUCCESS, StepStatus.FAILED)
GATE_AND_LONG_PLAN = plan_document("suite-gate-long", [
    {"stepId": "long", "kind": "sleep", "params": {"ms": 600_000}},
    {"stepId": "gate", "kind": "approval"},
])
WAIT_AND_LONG_PLAN = plan_document("suite-wait-long", [
    {"stepId": "long", "kind": "sleep", "params": {"ms": 600_000}},
    {"stepId": "wait", "kind": "noop", "waitForSignal": {"name": "go"}},
], schemaVersion="v1.3", signals={"go": {"payload": {"type": "object"}}})


@dataclass(frozen=True)
class StormSize:
    """How big the signal storm is: small in CI, bigger in ``nox -s stress``."""

    runs: int = 20
    seconds: float = 2.0
    rate: float = 100.0  # signals a second, over all runs

    @classmethod
    def from_env(cls) -> StormSize:
        """The size from DVT_SIGNAL_STORM_RUNS, _SECONDS and _RATE (defaults: CI's)."""
        return cls(int(os.environ.get("DVT_SIGNAL_STORM_RUNS", cls.runs)),
                   float(os.environ.get("DVT_SIGNAL_STORM_SECONDS", cls.seconds)),
                   float(os.environ.get("DVT_SIGNAL_STORM_RATE", cls.rate)))


def _outcome(answer: SignalDecision) -> str:
    if not answer.accepted:
        return str(answer.error_code)
    return "no-op" if answer.no_op else "accepted"


def _replay_pause_decisions(events: list[Event]) -> RunStatus:
    """Check every PAUSE/RESUME decision against the run's state machine; the final state.

    Decided in runSeq order, an accepted PAUSE must find the run running and a no-op PAUSE
    find it paused (and the same for RESUME): a stale answer fails here.
    """
    state = RunStatus.RUNNING
    for e in events:
        if e.event_type != "SignalAccepted":
            continue
        kind, no_op = e.payload["signalType"], bool(e.payload.get("noOp"))
        target = {"PAUSE": RunStatus.PAUSED, "RESUME": RunStatus.RUNNING}.get(kind)
        if target is None:
            continue
        assert (state == target) == no_op, (e.run_seq, kind, no_op, state)
        state = target
    return state


def _accepted(events: list[Event]) -> set[str]:
    """The ids of the PAUSE/RESUME signals accepted with an effect to come."""
    return {e.payload["signalId"] for e in events
            if e.event_type == "SignalAccepted" and not e.payload.get("noOp")}


def _effects(events: list[Event]) -> list[str]:
    """The signal ids the run's pause and resume events name, in log order."""
    return [str(e.caused_by_signal_id) for e in events
            if e.event_type in ("RunPaused", "RunResumed")]
