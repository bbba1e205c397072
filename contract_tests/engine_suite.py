"""The engine contract suite: what every engine behind the engine port must do.

Write it once, run it per engine, in the style of eventsourcing's shared recorder tests: an
adapter subclasses :class:`EngineContractSuite` and provides one fixture, ``engine_harness``,
that yields an :class:`EngineHarness`::

    class TestTemporalEngine(EngineContractSuite):
        @pytest.fixture
        async def engine_harness(self, temporal_server):
            store = MemoryRunStateStore()                 # or the PostgreSQL store
            engine = open_engine("temporal", store=store, target=temporal_server.address)
            yield EngineHarness(engine, store, HarnessCapabilities(pause_drains=False))
            await engine.close()

The fixture interface is small on purpose:

- ``engine``: a started :class:`~dvt_engine.ports.WorkflowEngine` whose runs write to ``store``.
- ``store``: the :class:`~dvt_engine.ports.RunStateStore` the engine writes to; the suite reads
  runs, events and snapshots only through it (contract §7: the store holds the truth).
- ``capabilities``: a :class:`HarnessCapabilities` declaring the real differences between
  engines. The suite branches on these flags explicitly; it never skips a test.

The fixture's scope is the subclass's choice (a server-backed engine may share one engine across
the class); every test uses fresh run ids, so runs never collide. Each test waits on conditions
with bounded timeouts (``capabilities.timeout``), never on sleeps.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from contract_tests.parity import dag_violations
from contract_tests.scenarios import (
    EngineSide,
    Scenario,
    ScenarioOutcome,
    check_intent,
    compare_with_expected,
    execute_scenario,
    get_scenario,
    make_context,
    make_plan_ref,
    scenario_ids,
    wait_until,
)
from dvt_engine.checksum import snapshot_bytes, snapshot_checksum
from dvt_engine.errors import DvtError, ErrorCode
from dvt_engine.models.events import Event
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import EngineRunRef, RunContext, RunStatus, StepStatus
from dvt_engine.models.signals import Actor, Role, SignalDecision, SignalRequest, SignalType
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore, WorkflowEngine

OPERATOR = Actor(id="olivia", roles=(Role.OPERATOR,))
ENGINEER = Actor(id="eve", roles=(Role.ENGINEER,))
APPROVER = Actor(id="alice", roles=(Role.APPROVER,))
VIEWER = Actor(id="victor", roles=())


@dataclass(frozen=True)
class HarnessCapabilities:
    """Real differences between engines, declared by each adapter's fixture.

    - ``pause_drains``: the engine's pause cannot recall work it already handed out (Conductor):
      a step scheduled just before PAUSE may still start after RunPaused, and the run reports
      PAUSED + DRAINING until running steps settle. False: no step starts after RunPaused
      (Temporal, reference).
    - ``pause_cancels_in_flight``: steps running at PAUSE are cancelled rather than finished.
    - ``timeout``: seconds any single wait for a run's state may take on this engine.
    """

    pause_drains: bool = False
    pause_cancels_in_flight: bool = False
    timeout: float = 60.0


@dataclass
class EngineHarness:
    """What a subclass's ``engine_harness`` fixture yields."""

    engine: WorkflowEngine
    store: RunStateStore
    capabilities: HarnessCapabilities = HarnessCapabilities()

    @property
    def side(self) -> EngineSide:
        """This engine as one side of a parity comparison."""
        return EngineSide(self.engine, self.store)


@dataclass
class Started:
    """A run started by a test: its context, engine reference and helpers to steer it."""

    harness: EngineHarness
    context: RunContext
    ref: EngineRunRef

    @property
    def tenant_id(self) -> str:
        """The run's tenant."""
        return self.context.tenant_id

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.context.run_id

    async def wait(self, predicate: Callable[[RunSnapshot], bool], what: str) -> RunSnapshot:
        """Wait until the run's snapshot satisfies ``predicate`` (fail if it ends first)."""
        return await wait_until(self.harness.store, self.tenant_id, self.run_id, predicate,
                                timeout=self.harness.capabilities.timeout, what=what)

    async def finished(self) -> RunSnapshot:
        """Wait for the run's terminal snapshot."""
        return await self.wait(lambda s: s.status.is_terminal, f"{self.run_id} to end")

    async def events(self) -> list[Event]:
        """The run's log in runSeq order."""
        return await self.harness.store.fetch_events(self.tenant_id, self.run_id)

    async def signal(
        self, type_: SignalType, actor: Actor, payload: dict[str, Any] | None = None, *,
        signal_id: str | None = None, tenant_id: str | None = None, run_id: str | None = None,
    ) -> SignalDecision:
        """Send a signal through the engine port."""
        request = SignalRequest(
            signal_id=signal_id or f"sig-{uuid.uuid4().hex[:10]}", type=type_,
            tenant_id=tenant_id or self.tenant_id, run_id=run_id or self.run_id,
            payload=payload or {}, actor=actor,
        )
        return await self.harness.engine.signal(self.ref, request)


def plan_document(plan_id: str, steps: list[dict[str, Any]], **metadata: Any) -> dict[str, Any]:
    """A plan document with the suite's defaults."""
    return {"metadata": {"planId": plan_id, "planVersion": "1.0.0", "schemaVersion": "v1.2",
                         **metadata},
            "steps": steps}


def _scenario_for(plan: dict[str, Any], **context: Any) -> Scenario:
    data = json.dumps(plan, indent=2).encode("utf-8")
    scenario = Scenario.for_plan(data, str(plan["metadata"]["planId"]))
    if context:
        scenario = Scenario(scenario.scenario_id, scenario.description, data, scenario.plan_name,
                            {**scenario.context, **context}, scenario.plan_ref, (), {})
    return scenario


def _types(events: list[Event], step_id: str | None = None) -> list[str]:
    return [e.event_type for e in events if step_id is None or e.step_id == step_id]


GATE_PLAN = plan_document("suite-gate", [
    {"stepId": "prepare", "kind": "noop"},
    {"stepId": "gate", "kind": "approval", "dependsOn": ["prepare"]},
    {"stepId": "after", "kind": "echo", "dependsOn": ["gate"], "params": {"done": True}},
])


class EngineContractSuite:
    """Every engine must pass these tests; subclass it and provide ``engine_harness``."""

    @pytest.fixture
    def engine_harness(self) -> EngineHarness:
        """Provided by the subclass: the engine under test, its store and declared traits."""
        raise NotImplementedError(
            "subclass EngineContractSuite and define an engine_harness fixture")

    # --- helpers ------------------------------------------------------------------------
    async def start(self, h: EngineHarness, plan: dict[str, Any], **context: Any) -> Started:
        """Store ``plan`` in the registry and start it with a fresh run id."""
        scenario = _scenario_for(plan, **context)
        ctx = make_context(scenario)
        ref = await h.engine.start_run(await make_plan_ref(scenario, h.store), ctx)
        return Started(h, ctx, ref)

    async def start_at_gate(self, h: EngineHarness) -> Started:
        """A run whose approval gate is waiting."""
        run = await self.start(h, GATE_PLAN)
        await run.wait(lambda s: s.step("gate").substatus == "AWAITING_APPROVAL", "gate waits")
        return run

    async def refused(self, h: EngineHarness, plan_ref: PlanRef | None = None,
                      plan: dict[str, Any] | None = None, **context: Any) -> DvtError:
        """Start a run that must be refused; return the error."""
        scenario = _scenario_for(plan or GATE_PLAN)
        ctx: Any = make_context(scenario)
        if context:
            # A mapping reaches the engine unvalidated, as it would from JSON or another process.
            ctx = {**ctx.model_dump(mode="json", by_alias=True), **context}
        ref = plan_ref or await make_plan_ref(scenario, h.store)
        with pytest.raises(DvtError) as info:
            await h.engine.start_run(ref, ctx)
        return info.value

    # --- golden scenarios ---------------------------------------------------------------
    @pytest.mark.parametrize("scenario_id", scenario_ids())
    async def test_golden_scenario(self, engine_harness: EngineHarness, scenario_id: str) -> None:
        """Each golden scenario gives the reviewed expected result (status, checksum, log)."""
        h = engine_harness
        scenario = get_scenario(scenario_id)
        expected = scenario.expected
        outcome: ScenarioOutcome = await execute_scenario(
            scenario, h.engine, h.store, timeout=h.capabilities.timeout)
        problems = check_intent(scenario, outcome)
        assert not problems, f"{scenario_id}: {problems}"
        differences = compare_with_expected(outcome, expected, h.engine.name)
        assert not differences, "\n".join(f"[{d.kind}] {d.message}" for d in differences)
        if outcome.error is None:
            # The stored snapshot is exactly what a rebuild from the log gives (contract §5.3).
            rebuilt = await h.store.project(outcome.tenant_id, outcome.run_id)
            assert snapshot_bytes(rebuilt) == snapshot_bytes(outcome.snapshot)

    # --- start_run ----------------------------------------------------------------------
    async def test_start_run_is_idempotent_on_the_run_request_key(
        self, engine_harness: EngineHarness
    ) -> None:
        """The same request started twice returns the same run and starts nothing new."""
        h = engine_harness
        scenario = _scenario_for(plan_document("suite-idem", [{"stepId": "a", "kind": "noop"}]))
        ctx = make_context(scenario)
        ref = await make_plan_ref(scenario, h.store)
        first = await h.engine.start_run(ref, ctx)
        again = await h.engine.start_run(ref, ctx)
        # A second request with the same runRequestId but a new runId is still the same request.
        other_id = ctx.model_copy(update={"run_id": f"{ctx.run_id}-b"})
        third = await h.engine.start_run(ref, other_id)
        # The same run: a reference may be more or less complete (an engine's own run id may
        # only be known to the call that started it), but it names the same dvt run.
        for ref_again in (again, third):
            assert ref_again.provider == first.provider
            assert (await h.engine.get_run_status(ref_again)).run_id == ctx.run_id
        run = Started(h, ctx, first)
        await run.finished()
        events = await run.events()
        assert _types(events).count("RunStarted") == 1
        assert _types(events).count("StepStarted") == 1
        assert await h.store.get_run(ctx.tenant_id, other_id.run_id) is None

    async def test_plan_not_in_registry_is_refused(self, engine_harness: EngineHarness) -> None:
        """A registry reference to bytes that were never stored: PLAN_NOT_FOUND."""
        h = engine_harness
        digest = hashlib.sha256(b"never stored " + uuid.uuid4().bytes).hexdigest()
        ref = PlanRef(uri=f"plan://sha256/{digest}", sha256=digest, schema_version="v1.2",
                      plan_id="suite-gate", plan_version="1.0.0")
        error = await self.refused(h, ref)
        assert error.code == ErrorCode.PLAN_NOT_FOUND

    @pytest.mark.parametrize("uri", [
        "file:///etc/passwd",
        "ftp://plans.example.com/p.json",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/",
        "https://127.0.0.1/plan.json",
        "https://10.0.0.7/plan.json",
        "https://plans.example.com/p.json",
    ])
    async def test_uri_outside_the_allowlist_is_refused(
        self, engine_harness: EngineHarness, uri: str
    ) -> None:
        """Refused with PLAN_URI_NOT_ALLOWED, and no run is registered."""
        h = engine_harness
        data = json.dumps(GATE_PLAN).encode()
        digest = hashlib.sha256(data).hexdigest()
        ref = PlanRef(uri=uri, sha256=digest, schema_version="v1.2", plan_id="suite-gate",
                      plan_version="1.0.0")
        run_id = f"suite-uri-{uuid.uuid4().hex[:8]}"
        error = await self.refused(h, ref, runId=run_id)
        assert error.code == ErrorCode.PLAN_URI_NOT_ALLOWED
        assert await h.store.get_run("acme", run_id) is None

    async def test_integrity_error_names_both_digests(self, engine_harness: EngineHarness) -> None:
        """PLAN_INTEGRITY_VALIDATION_FAILED is not retryable and carries both digests."""
        h = engine_harness
        scenario = get_scenario("plan-hash-mismatch")
        ref = await make_plan_ref(scenario, h.store)
        error = await self.refused(h, ref)
        assert error.code == ErrorCode.PLAN_INTEGRITY_VALIDATION_FAILED
        assert error.retryable is False
        details = json.dumps(error.details)
        assert ref.sha256 in details
        assert hashlib.sha256(scenario.plan_bytes).hexdigest() in details

    async def test_invalid_identifier_is_refused(self, engine_harness: EngineHarness) -> None:
        """A runId containing '|' is IDENTIFIER_INVALID (it would break every key)."""
        error = await self.refused(engine_harness, runId="bad|run")
        assert error.code == ErrorCode.IDENTIFIER_INVALID

    async def test_validate_reports_every_problem_as_data(
        self, engine_harness: EngineHarness
    ) -> None:
        """validate(plan) returns a report; an unknown kind is an error, not an exception."""
        from dvt_engine.models.plan import ExecutionPlan

        plan = ExecutionPlan.model_validate(get_scenario("unknown-kind").plan)
        report = await engine_harness.engine.validate(plan)
        assert report.ok is False
        assert ErrorCode.STEP_KIND_UNKNOWN in {i.code for i in report.errors}

    async def test_emulated_capability_runs(self, engine_harness: EngineHarness) -> None:
        """A known capability the engine lacks, with a documented emulation, runs emulated."""
        from dvt_engine.planning.capabilities import ALL_CAPABILITIES, emulation_for

        h = engine_harness
        declared = frozenset(getattr(h.engine, "declared_capabilities", lambda: h.engine
                                     .capabilities)())
        emulable = sorted(c for c in ALL_CAPABILITIES - declared if emulation_for(c, declared))
        plan = plan_document("suite-emulate", [{"stepId": "a", "kind": "noop"}],
                             requiresCapabilities=emulable[:1] or sorted(declared)[:1],
                             fallbackBehavior="emulate")
        from dvt_engine.models.plan import ExecutionPlan

        report = await h.engine.validate(ExecutionPlan.model_validate(plan))
        assert report.capabilities is not None
        if emulable:
            assert report.capabilities.resolution == "emulated"
        else:
            # This engine declares every capability dvt knows: nothing to emulate.
            assert report.capabilities.resolution == "satisfied"
        run = await self.start(h, plan)
        assert (await run.finished()).status == RunStatus.COMPLETED

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
        await self._approve(run)

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
        types = _types(await run.events())
        assert "RunPaused" not in types
        assert "SignalAccepted" not in types
        assert "SignalRejected" not in types
        snap = await engine_harness.store.get_snapshot(run.tenant_id, run.run_id)
        assert snap is not None
        assert snap.status == RunStatus.RUNNING
        await self._approve(run)

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
        await self._approve(run)

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
        await self._approve(run)
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
        assert _types(events).count("RunPaused") == 1
        assert _types(events).count("SignalAccepted") == 1
        assert _types(events).count("SignalRejected") == 1
        await run.signal(SignalType.RESUME, OPERATOR, signal_id="r-1")
        await run.wait(lambda s: s.status == RunStatus.RUNNING, "resumed")
        await self._approve(run)
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
        await self._approve(run)
        assert (await run.finished()).status == RunStatus.COMPLETED
        events = await run.events()
        seq = {e.event_type: e.run_seq for e in reversed(events)}  # first occurrence
        decisions = [e for e in events if e.event_type == "SignalAccepted"]
        by_type = {e.payload["signalType"]: e for e in decisions if not e.payload.get("noOp")}
        assert by_type["PAUSE"].run_seq < seq["RunPaused"]  # type: ignore[operator]
        assert by_type["RESUME"].run_seq < seq["RunResumed"]  # type: ignore[operator]
        assert _types(events).count("RunPaused") == 1
        assert _types(events).count("RunResumed") == 1

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
        await self._approve(run)
        await run.finished()

    # --- behaviour ----------------------------------------------------------------------
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
        types = _types(events)
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
            assert _types(events, "slow") == ["StepStarted", "StepCompleted"]
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
        assert _types(events, "next") == []
        assert [e.payload.get("reason") for e in events if e.event_type == "RunCancelled"] == \
            ["enough"]

    async def test_run_requiring_approval_waits_for_approve_run(
        self, engine_harness: EngineHarness
    ) -> None:
        """A plan with requiresApproval stays PENDING until APPROVE_RUN, then runs."""
        h = engine_harness
        run = await self.start(h, plan_document(
            "suite-approve-run", [{"stepId": "a", "kind": "noop"}], requiresApproval=True))
        snap = await h.store.get_snapshot(run.tenant_id, run.run_id)
        assert snap is not None
        assert snap.status == RunStatus.PENDING
        decision = await run.signal(SignalType.APPROVE_RUN, APPROVER, {"comment": "ok"})
        assert decision.accepted, decision
        final = await run.finished()
        assert final.status == RunStatus.COMPLETED
        types = _types(await run.events())
        assert types.index("RunApproved") < types.index("RunStarted")

    async def test_rejected_run_approval_fails_the_run(
        self, engine_harness: EngineHarness
    ) -> None:
        """APPROVE_RUN reject: RunFailed with RUN_NOT_APPROVED; nothing ran. Signals that act on a
        started run are refused while it waits (ILLEGAL_TRANSITION)."""
        h = engine_harness
        run = await self.start(h, plan_document(
            "suite-reject-run", [{"stepId": "a", "kind": "noop"}], requiresApproval=True))
        early = await run.signal(SignalType.PAUSE, OPERATOR)
        assert (early.accepted, early.error_code) == (False, ErrorCode.ILLEGAL_TRANSITION)
        unauthorized = await run.signal(SignalType.APPROVE_RUN, ENGINEER, {"decision": "approve"})
        assert unauthorized.error_code == ErrorCode.SIGNAL_UNAUTHORIZED
        decision = await run.signal(SignalType.APPROVE_RUN, APPROVER, {"decision": "reject"})
        assert decision.accepted, decision
        final = await run.finished()
        assert final.status == RunStatus.FAILED
        assert final.failure is not None
        assert final.failure.code == ErrorCode.RUN_NOT_APPROVED
        types = _types(await run.events())
        assert "RunStarted" not in types
        assert "StepStarted" not in types

    async def test_output_larger_than_32_kib_fails_the_step(
        self, engine_harness: EngineHarness
    ) -> None:
        """A step's JSON output is at most 32 KiB: a bigger one is STEP_OUTPUT_TOO_LARGE."""
        run = await self.start(engine_harness, plan_document("suite-big-output", [
            {"stepId": "big", "kind": "echo", "params": {"blob": "x" * 40_000}},
        ]))
        final = await run.finished()
        assert final.status == RunStatus.FAILED
        error = final.step("big").error
        assert error is not None
        assert error.code == ErrorCode.STEP_OUTPUT_TOO_LARGE
        assert all(len(e.model_dump_json()) < 32_768 for e in await run.events())

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
            assert _types(events).count("SignalAccepted") == 60
        else:
            assert answers[60].accepted
            assert _types(events).count("SignalAccepted") == 61
        await h.engine.cancel_run(run.ref, "done")
        assert (await run.finished()).status == RunStatus.CANCELLED

    async def test_retry_run_starts_a_new_run(self, engine_harness: EngineHarness) -> None:
        """RETRY_RUN on a FAILED run starts a new run with originalRunId; the old one stays."""
        h = engine_harness
        run = await self.start_at_gate(h)
        await run.signal(SignalType.APPROVE_STEP, APPROVER, {"stepId": "gate",
                                                             "decision": "reject"})
        failed = await run.finished()
        assert failed.status == RunStatus.FAILED
        old_events = await run.events()
        old_checksum = snapshot_checksum(failed)
        decision = await run.signal(SignalType.RETRY_RUN, ENGINEER, {"reason": "try again"})
        assert decision.accepted, decision
        assert decision.new_run_id
        assert decision.new_run_id != run.run_id
        header = await h.store.get_run(run.tenant_id, decision.new_run_id)
        assert header is not None
        assert header.original_run_id == run.run_id
        assert header.plan_ref == (await h.store.get_run(run.tenant_id, run.run_id)).plan_ref  # type: ignore[union-attr]
        # start_run is idempotent on the request: asking again is how a client gets the ref.
        new_ctx = RunContext(tenant_id=header.tenant_id, project_id=header.project_id,
                             environment_id=header.environment_id, run_id=header.run_id,
                             run_request_id=header.run_request_id,
                             original_run_id=header.original_run_id)
        new = Started(h, new_ctx, await h.engine.start_run(header.plan_ref, new_ctx))
        snap = await new.wait(lambda s: s.step("gate").substatus == "AWAITING_APPROVAL",
                              "new run's gate waits")
        assert snap.original_run_id == run.run_id
        await self._approve(new)
        assert (await new.finished()).status == RunStatus.COMPLETED
        # The old run is untouched apart from the decision record of the RETRY_RUN itself.
        after = await run.events()
        assert [e.event_type for e in after[len(old_events):]] == ["SignalAccepted"]
        old_final = await h.store.get_snapshot(run.tenant_id, run.run_id)
        assert old_final is not None
        assert snapshot_checksum(old_final) == old_checksum
        # Retrying a COMPLETED run is refused.
        refused = await new.signal(SignalType.RETRY_RUN, ENGINEER)
        assert (refused.accepted, refused.error_code) == (False, ErrorCode.RUN_TERMINAL)

    async def test_every_run_is_dag_consistent_and_projects_identically(
        self, engine_harness: EngineHarness
    ) -> None:
        """The stored snapshot equals a rebuild from the log, byte for byte, and the log
        respects the DAG (fan-out/fan-in under real parallelism)."""
        from contract_tests.parity import normalize_events

        h = engine_harness
        outcome = await execute_scenario(get_scenario("parallel-50"), h.engine, h.store,
                                         timeout=h.capabilities.timeout)
        stored = await h.store.get_snapshot(outcome.tenant_id, outcome.run_id)
        rebuilt = await h.store.project(outcome.tenant_id, outcome.run_id)
        assert stored is not None
        assert snapshot_bytes(stored) == snapshot_bytes(rebuilt)
        events = await h.store.fetch_events(outcome.tenant_id, outcome.run_id)
        header = await h.store.get_run(outcome.tenant_id, outcome.run_id)
        assert header is not None
        deps = {s.step_id: s.depends_on for s in header.steps}
        assert dag_violations(normalize_events(events), deps) == []
        seqs = [e.run_seq or 0 for e in events]
        assert seqs == sorted(seqs)
        assert 0 not in seqs
        assert len(set(seqs)) == len(seqs)

    async def _approve(self, run: Started) -> None:
        decision = await run.signal(SignalType.APPROVE_STEP, APPROVER,
                                    {"stepId": "gate", "decision": "approve"})
        assert decision.accepted, decision
