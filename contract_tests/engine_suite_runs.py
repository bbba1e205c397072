"""Engine contract tests of a run's life: golden scenarios, start_run, plans refused or run."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from contract_tests.engine_harness import (
    APPROVER,
    ENGINEER,
    GATE_PLAN,
    OPERATOR,
    EngineHarness,
    EngineSuiteBase,
    Started,
    event_types,
    plan_document,
    scenario_for,
)
from contract_tests.parity import dag_violations
from contract_tests.scenarios import (
    ScenarioOutcome,
    check_intent,
    compare_with_expected,
    execute_scenario,
    get_scenario,
    make_context,
    make_plan_ref,
    scenario_ids,
)
from dvt_engine.checksum import snapshot_bytes, snapshot_checksum
from dvt_engine.errors import ErrorCode
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunContext, RunStatus
from dvt_engine.models.signals import SignalType


class RunLifecycleTests(EngineSuiteBase):
    """Starting runs, refusing plans, approving runs, retrying runs; golden scenarios."""

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
        scenario = scenario_for(plan_document("suite-idem", [{"stepId": "a", "kind": "noop"}]))
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
        assert event_types(events).count("RunStarted") == 1
        assert event_types(events).count("StepStarted") == 1
        assert await h.store.get_run(ctx.tenant_id, other_id.run_id) is None

    async def test_a_run_id_of_another_tenant_is_a_fresh_id(
        self, engine_harness: EngineHarness
    ) -> None:
        """Two tenants using one runId get two independent runs: run ids are tenant-scoped."""
        h = engine_harness
        plan = plan_document("suite-tenants", [{"stepId": "a", "kind": "echo",
                                                "params": {"value": "x"}}])
        scenario = scenario_for(plan)
        first_ctx = make_context(scenario)
        other_ctx = first_ctx.model_copy(update={"tenant_id": f"{first_ctx.tenant_id}-other"})
        ref = await make_plan_ref(scenario, h.store)
        first = Started(h, first_ctx, await h.engine.start_run(ref, first_ctx))
        other = Started(h, other_ctx, await h.engine.start_run(ref, other_ctx))
        for run in (first, other):
            snapshot = await run.finished()
            assert snapshot.status == RunStatus.COMPLETED
            assert event_types(await run.events()).count("RunStarted") == 1
            assert event_types(await run.events()).count("StepStarted") == 1
        first_header = await h.store.get_run(first_ctx.tenant_id, first_ctx.run_id)
        other_header = await h.store.get_run(other_ctx.tenant_id, other_ctx.run_id)
        assert first_header is not None
        assert other_header is not None
        assert first_header.run_request_key != other_header.run_request_key

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
        types = event_types(await run.events())
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
        types = event_types(await run.events())
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
        await self.approve_gate(new)
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

