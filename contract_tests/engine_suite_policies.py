"""Engine contract tests of the run rules (contract §3): retries, failure policies, gates,
pause and cancel, and that every engine takes them from the core alone."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from contract_tests.engine_harness import (
    APPROVER,
    OPERATOR,
    EngineHarness,
    EngineSuiteBase,
    event_types,
    plan_document,
)
from contract_tests.late_failure import failing_beside_a_gate
from contract_tests.scenarios import (
    execute_scenario,
    get_scenario,
)
from dvt_engine.errors import ErrorCode
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import RunStatus, StepStatus
from dvt_engine.models.signals import SignalType
from dvt_engine.rules import failure as failure_rules


class RunRuleTests(EngineSuiteBase):
    """The run rules, on every engine."""

    # --- retries, pause and cancel -----------------------------------------------------
    async def test_engine_retries_raise_engine_attempt_only(
        self, engine_harness: EngineHarness
    ) -> None:
        """A step that fails twice then succeeds: StepStarted and StepCompleted once each, the
        completion on engine attempt 3 of logical attempt 1."""
        h = engine_harness
        outcome = await execute_scenario(get_scenario("flaky-third-attempt"), h.engine, h.store,
                                         timeout=h.capabilities.timeout)
        events = await h.store.fetch_events(outcome.tenant_id, outcome.run_id)
        flaky = [e for e in events if e.step_id == "flaky"]
        assert [e.event_type for e in flaky] == ["StepStarted", "StepCompleted"]
        assert [e.logical_attempt_id for e in flaky] == [1, 1]
        assert flaky[-1].engine_attempt_id == 3

    async def test_non_retryable_code_stops_engine_retries(
        self, engine_harness: EngineHarness
    ) -> None:
        """A code in nonRetryableErrorCodes fails the logical attempt on engine attempt 1."""
        h = engine_harness
        outcome = await execute_scenario(get_scenario("non-retryable-code"), h.engine, h.store,
                                         timeout=h.capabilities.timeout)
        events = await h.store.fetch_events(outcome.tenant_id, outcome.run_id)
        failed = [e for e in events if e.event_type == "StepFailed"]
        assert [(e.step_id, e.engine_attempt_id) for e in failed] == [("query", 1)]

    async def test_pause_while_a_step_runs(self, engine_harness: EngineHarness) -> None:
        """No step starts between RunPaused and RunResumed; the running step drains (or is
        cancelled, where the engine is configured so); resume never re-runs a finished step."""
        h = engine_harness
        run = await self.start(h, plan_document("suite-pause", [
            {"stepId": "slow", "kind": "sleep", "params": {"ms": 1000}},
            {"stepId": "next", "kind": "noop", "dependsOn": ["slow"]},
        ]))
        await run.wait(lambda s: s.step("slow").status == StepStatus.RUNNING, "slow runs")
        decision = await run.signal(SignalType.PAUSE, OPERATOR)
        assert decision.accepted
        paused = await run.wait(lambda s: s.status == RunStatus.PAUSED, "paused")
        if paused.step("slow").status == StepStatus.RUNNING:
            assert paused.substatus == "DRAINING"
        settled = await run.wait(
            lambda s: s.status == RunStatus.PAUSED and s.step("slow").status != StepStatus.RUNNING,
            "slow settles while paused")
        assert settled.substatus is None
        assert settled.step("next").status == StepStatus.PENDING
        if h.capabilities.pause_cancels_in_flight:
            assert settled.step("slow").status != StepStatus.SUCCESS
        else:
            assert settled.step("slow").status == StepStatus.SUCCESS
        await run.signal(SignalType.RESUME, OPERATOR)
        final = await run.finished()
        events = await run.events()
        types = event_types(events)
        paused_at, resumed_at = types.index("RunPaused"), types.index("RunResumed")
        late = [e for e in events[paused_at:resumed_at] if e.event_type == "StepStarted"]
        if h.capabilities.pause_drains:
            # A draining pause cannot recall a step the engine had already scheduled, but it
            # schedules nothing whose dependencies settled after the pause.
            settled_before = {e.step_id for e in events[:paused_at]
                              if e.event_type in ("StepCompleted", "StepSkipped")}
            header = await h.store.get_run(run.tenant_id, run.run_id)
            assert header is not None
            deps = {s.step_id: set(s.depends_on) for s in header.steps}
            assert all(deps[e.step_id or ""] <= settled_before for e in late)
        else:
            assert late == []  # no step starts after RunPaused until RunResumed
        assert final.status == RunStatus.COMPLETED
        slow = final.step("slow")
        if h.capabilities.pause_cancels_in_flight:
            # The cancelled attempt stays FAILED in history; resume runs a new logical attempt.
            assert [(a.logical_attempt_id, a.status) for a in slow.attempts] == [
                (1, StepStatus.FAILED), (2, StepStatus.SUCCESS)]
            assert slow.attempts[0].error is not None
            assert slow.attempts[0].error.code == ErrorCode.STEP_CANCELLED
        else:
            assert event_types(events, "slow") == ["StepStarted", "StepCompleted"]
            assert slow.logical_attempt_id == 1

    async def test_cancel_run_through_the_port(self, engine_harness: EngineHarness) -> None:
        """cancel_run stops a run whose step is running; the next step never starts."""
        h = engine_harness
        run = await self.start(h, plan_document("suite-cancel", [
            {"stepId": "long", "kind": "sleep", "params": {"ms": 60_000}},
            {"stepId": "next", "kind": "noop", "dependsOn": ["long"]},
        ]))
        await run.wait(lambda s: s.step("long").status == StepStatus.RUNNING, "long runs")
        await h.engine.cancel_run(run.ref, "enough")
        final = await run.finished()
        assert final.status == RunStatus.CANCELLED
        assert final.step("next").status == StepStatus.PENDING
        events = await run.events()
        assert event_types(events, "next") == []
        assert [e.payload.get("reason") for e in events if e.event_type == "RunCancelled"] == \
            ["enough"]


    # --- the rules come from the core alone ---------------------------------------------
    async def test_a_failure_rule_changed_in_the_core_changes_every_engine(
        self, engine_harness: EngineHarness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The failFast gate rule is changed in dvt_engine.rules alone (a failing run lets a
        waiting gate be decided instead of cancelling it), and the engine follows: the gate is
        approved after the failure, then the run fails. An adapter that kept its own copy of
        the rule would cancel the gate (STEP_CANCELLED) and refuse the approval."""
        asked: list[tuple[str, ...]] = []

        def gates_kept_open(plan: ExecutionPlan, failure: Mapping[str, Any] | None, *,
                            ending: bool, waiting_gates: Iterable[str]) -> tuple[str, ...]:
            asked.append(tuple(waiting_gates))
            return ()

        monkeypatch.setattr(failure_rules, "gates_to_cancel", gates_kept_open)
        run = await self.start(engine_harness, plan_document(
            "suite-core-rule", failing_beside_a_gate(), failurePolicy="failFast"))
        await run.wait(lambda s: s.step("bad").status == StepStatus.FAILED
                       and s.step("gate").substatus == "AWAITING_APPROVAL",
                       "bad failed while the gate waits")
        decision = await run.signal(SignalType.APPROVE_STEP, APPROVER,
                                    {"stepId": "gate", "decision": "approve"})
        assert decision.accepted, decision
        final = await run.finished()
        assert final.status == RunStatus.FAILED
        assert final.failure is not None
        assert (final.failure.step_id, final.failure.code) == ("bad", "BOOM")
        assert final.step("gate").status == StepStatus.SUCCESS
        assert final.step("after-gate").status == StepStatus.PENDING
        assert event_types(await run.events(), "gate") == [
            "StepStarted", "StepAwaitingApproval", "StepCompleted"]
        assert asked, "the engine never asked the core which gates a failing run cancels"
