"""The parity harness on hand-built logs: normalization, comparison rules, diffs, DAG order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contract_tests.parity import (
    NormalizedEvent,
    RunRecord,
    compare_event_logs,
    compare_runs,
    dag_violations,
    normalize_event,
    normalize_events,
    run_parity,
)
from contract_tests.scenarios import EngineSide, get_scenario
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.eventlog import EventFactory
from dvt_engine.models.events import Event
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunHeader, StepOutline
from dvt_engine.projector import project
from dvt_engine.steps.registry import HandlerRegistry, default_registry
from dvt_engine.stores.memory import MemoryRunStateStore

EPOCH = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DIAMOND = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}


def header(run_id: str) -> RunHeader:
    return RunHeader(
        tenant_id="acme", project_id="analytics", environment_id="dev", run_id=run_id,
        plan_id="diamond", plan_version="1.0.0",
        plan_ref=PlanRef(uri="plan://sha256/" + "0" * 64, sha256="0" * 64,
                         schema_version="v1.2", plan_id="diamond", plan_version="1.0.0"),
        steps=tuple(StepOutline(step_id=s, kind="echo", depends_on=d) for s, d in DIAMOND.items()),
        engine="reference", run_request_key="1" * 64, created_at=EPOCH,
    )


def log(run_id: str, script: list[tuple[str, str | None, dict[str, Any]]], *,
        engine: str = "reference", ms: int = 5, engine_attempt: int = 1) -> list[Event]:
    """Persisted events of a scripted run; timestamps, ids and engine details vary by side."""
    h = header(run_id)
    tick = iter(range(10_000))
    f = EventFactory(h, engine, clock=lambda: EPOCH + timedelta(milliseconds=ms * next(tick)))
    out: list[Event] = []
    for seq, (etype, step, payload) in enumerate(script, start=1):
        if etype == "RunStarted":
            payload = {"engine": engine, "engineRunRef": {"provider": engine, "id": run_id}}
        if step is None:
            event = f.run_event(etype, payload)
        else:
            event = f.step_event(etype, step, payload, engine_attempt_id=engine_attempt)
        out.append(event.model_copy(update={"run_seq": seq * 2, "persisted_at": f.clock()}))
    return out


def diamond_script(order_bc: tuple[str, str] = ("b", "c")) -> list[tuple[str, str | None,
                                                                         dict[str, Any]]]:
    x, y = order_bc
    return [
        ("RunStarted", None, {}),
        ("StepStarted", "a", {"kind": "echo"}),
        ("StepCompleted", "a", {"output": {"v": "a"}}),
        ("StepStarted", x, {"kind": "echo"}),
        ("StepStarted", y, {"kind": "echo"}),
        ("StepCompleted", y, {"output": {"v": y}, "cost": {"units": 1, "durationMs": 3}}),
        ("StepCompleted", x, {"output": {"v": x}, "cost": {"units": 1, "durationMs": 9}}),
        ("StepStarted", "d", {"kind": "echo"}),
        ("StepCompleted", "d", {"output": {"v": "d"}}),
        ("RunCompleted", None, {"succeeded": 4, "skipped": 0}),
    ]


def record(label: str, run_id: str, events: list[Event]) -> RunRecord:
    h = header(run_id)
    return RunRecord.of(label, h, project(h, events), events)


def test_two_engines_with_different_interleaving_and_ids_are_equivalent() -> None:
    a = record("reference", "run-a", log("run-a", diamond_script(("b", "c"))))
    b = record("temporal", "run-b", log("run-b", diamond_script(("c", "b")), engine="temporal",
                                        ms=50, engine_attempt=2))
    report = compare_runs(a, b)
    assert report.equal, report.summary()
    assert report.checksums == {"reference": a.checksum, "temporal": b.checksum}
    assert a.checksum == b.checksum
    assert report.to_dict()["equal"] is True
    assert report.diff == ""


def test_same_labels_are_made_distinct() -> None:
    a = record("reference", "run-a", log("run-a", diamond_script()))
    b = record("reference", "run-b", log("run-b", diamond_script()))
    report = compare_runs(a, b)
    assert report.equal
    assert set(report.checksums) == {"reference#1", "reference#2"}


def test_different_output_changes_checksum_and_multiset_with_a_readable_diff() -> None:
    script = diamond_script()
    changed = [(t, s, ({"output": {"v": "B!"}} if (t, s) == ("StepCompleted", "b") else p))
               for t, s, p in script]
    report = compare_runs(record("x", "run-a", log("run-a", script)),
                          record("y", "run-b", log("run-b", changed)))
    assert not report.equal
    kinds = {d.kind for d in report.differences}
    assert kinds == {"checksum", "events"}
    assert "only in x: StepCompleted b#1" in report.summary()
    assert "-StepCompleted b#1" in report.diff
    assert '+StepCompleted b#1 {"output":{"v":"B!"}}' in report.diff
    assert '"v": "B!"' in report.diff  # the parity-form diff of the snapshots


def test_order_within_the_run_stream_matters() -> None:
    a = [NormalizedEvent("RunPaused", None, 1, '{"ordinal":1}'),
         NormalizedEvent("SignalAccepted", None, 1, '{"signalType":"PAUSE"}')]
    diffs = compare_event_logs(a, list(reversed(a)), ("a", "b"))
    assert [d.kind for d in diffs] == ["order"]
    assert diffs[0].stream == "(run)"


def test_order_within_a_step_matters_but_not_across_steps() -> None:
    s1 = NormalizedEvent("StepStarted", "x", 1)
    s2 = NormalizedEvent("StepCompleted", "x", 1)
    t1 = NormalizedEvent("StepStarted", "y", 1)
    assert compare_event_logs([s1, t1, s2], [t1, s1, s2]) == []
    diffs = compare_event_logs([s1, s2, t1], [s2, s1, t1])
    assert [(d.kind, d.stream) for d in diffs] == [("order", "x")]


def test_multiset_counts_duplicates() -> None:
    e = NormalizedEvent("SignalRejected", None, 1, '{"errorCode":"RUN_TERMINAL"}')
    diffs = compare_event_logs([e, e], [e])
    assert [d.kind for d in diffs] == ["events"]
    assert "only in a" in diffs[0].message


def test_dag_violation_is_reported_per_side() -> None:
    bad_script = diamond_script()
    # d starts before c completed: not consistent with the DAG.
    i_d = bad_script.index(("StepStarted", "d", {"kind": "echo"}))
    moved = bad_script.pop(i_d)
    bad_script.insert(5, moved)
    events = normalize_events(log("run-b", bad_script))
    problems = dag_violations(events, DIAMOND)
    assert len(problems) == 1
    assert "d attempt 1 started before" in problems[0]
    report = compare_runs(record("good", "run-a", log("run-a", diamond_script())),
                          record("bad", "run-b", log("run-b", bad_script)))
    assert [d.kind for d in report.differences] == ["dag"]
    assert report.differences[0].side == "bad"


def test_skipped_dependency_satisfies_the_dag() -> None:
    events = [NormalizedEvent("StepSkipped", "a", 1, '{"reason":"r"}'),
              NormalizedEvent("StepStarted", "b", 1)]
    assert dag_violations(events, {"a": (), "b": ("a",)}) == []
    assert dag_violations(events[1:], {"a": (), "b": ("a",)})


def test_normalization_keeps_only_engine_independent_payload() -> None:
    h = header("run-n")
    f = EventFactory(h, "engine")
    failed = f.step_event("StepFailed", "a", {"error": {
        "code": "BOOM", "message": "activity task failed: worker-7", "retryable": True}},
        engine_attempt_id=3)
    n = normalize_event(failed)
    assert n.payload == {"error": {"code": "BOOM", "retryable": True}}
    started = normalize_event(f.run_event("RunStarted", {"engine": "temporal",
                                                         "engineRunRef": {"x": 1}}))
    assert started.payload == {}
    decision = normalize_event(f.signal_event("SignalAccepted", "f" * 64, {
        "signalId": "s1", "signalType": "APPROVE_STEP", "stepId": "gate",
        "actor": {"id": "alice", "roles": ["approver"]}, "effectiveRole": "approver",
        "noOp": False, "request": {"stepId": "gate", "decision": "reject", "comment": "no"}}))
    assert decision.payload == {"signalId": "s1", "signalType": "APPROVE_STEP",
                                "stepId": "gate", "decision": "reject"}
    unknown = normalize_event(f.run_event("SomethingNew", {"anything": 1}))
    assert (unknown.event_type, unknown.payload) == ("SomethingNew", {})


def test_normalized_event_round_trips_through_json() -> None:
    e = NormalizedEvent("StepCompleted", "a", 2, '{"output":{"k":[1,2]}}')
    assert NormalizedEvent.from_dict(e.to_dict()) == e


# --- run_parity: driving scenarios on two engines ------------------------------------------


def reference_side(registry: HandlerRegistry | None = None, name: str | None = None) -> EngineSide:
    store = MemoryRunStateStore()
    return EngineSide(ReferenceEngine(store, registry=registry), store, name)


@pytest.mark.parametrize("scenario_id", [
    "diamond", "parallel-50", "pause-resume-gate", "await-operator-retry", "skip-step",
    "cancel-mid-run", "approval-rejected", "plan-hash-mismatch", "capability-degrade",
])
async def test_two_reference_engines_are_equivalent(scenario_id: str) -> None:
    a, b = reference_side(), reference_side()
    try:
        report = await run_parity(get_scenario(scenario_id), a, b)
    finally:
        await a.engine.close()
        await b.engine.close()
    assert report.equal, report.summary()
    assert report.labels == ("reference#1", "reference#2")
    if scenario_id != "plan-hash-mismatch":
        checksums = set(report.checksums.values())
        assert len(checksums) == 1
        assert checksums == {get_scenario(scenario_id).expected["snapshotChecksum"]}


async def test_a_different_step_result_is_reported_with_a_diff() -> None:
    registry = default_registry().copy()

    async def shouting_echo(ctx: Any) -> dict[str, Any]:
        return {k: str(v).upper() for k, v in ctx.params.items()}

    registry.register("echo", shouting_echo, replace=True)
    a, b = reference_side(name="reference"), reference_side(registry, name="patched")
    try:
        report = await run_parity(get_scenario("diamond"), a, b)
    finally:
        await a.engine.close()
        await b.engine.close()
    assert not report.equal
    assert {d.kind for d in report.differences} == {"checksum", "events"}
    assert '+StepCompleted b#1 {"output":{"side":"LEFT"}}' in report.diff
    assert report.to_dict()["equal"] is False
    assert set(report.to_dict()["checksums"]) == {"reference", "patched"}


class _SerialReference(ReferenceEngine):
    """A reference engine that declares no capabilities (so it refuses parallel plans)."""

    capabilities = frozenset()

    @classmethod
    def declared_capabilities(cls) -> frozenset[str]:
        return frozenset()


async def test_a_refusal_on_one_side_only_is_a_difference() -> None:
    a = reference_side()
    store = MemoryRunStateStore()
    b = EngineSide(_SerialReference(store), store, "serial")
    try:
        report = await run_parity(get_scenario("fan-out-fan-in"), a, b)
    finally:
        await a.engine.close()
        await b.engine.close()
    assert [d.kind for d in report.differences] == ["error"]
    assert "CAPABILITY_NOT_SUPPORTED" in report.differences[0].message
    assert report.checksums["serial"] is None
    assert report.checksums["reference"] == get_scenario("fan-out-fan-in").expected[
        "snapshotChecksum"]


async def test_run_parity_accepts_a_plain_plan_file() -> None:
    from contract_tests.scenarios import PLANS_DIR

    a, b = reference_side(), reference_side()
    try:
        report = await run_parity(str(PLANS_DIR / "linear-chain.json"), a, b)
    finally:
        await a.engine.close()
        await b.engine.close()
    assert report.equal, report.summary()


# --- the scenario driver -----------------------------------------------------------------------


async def test_cancel_run_action_and_inline_plan() -> None:
    from contract_tests.scenarios import Scenario, execute_scenario

    scenario = Scenario.from_document({
        "scenarioId": "inline-cancel",
        "plan": {"metadata": {"planId": "inline", "planVersion": "1", "schemaVersion": "v1.2"},
                 "steps": [{"stepId": "long", "kind": "sleep", "params": {"ms": 60000}}]},
        "actions": [{"when": {"stepId": "long", "status": "RUNNING"},
                     "cancelRun": {"reason": "by port"}}],
        "expect": {"status": "CANCELLED"},
    })
    side = reference_side()
    try:
        outcome = await execute_scenario(scenario, side.engine, side.store, timeout=20)
    finally:
        await side.engine.close()
    assert outcome.snapshot.status == "CANCELLED"
    assert outcome.decisions == [{"cancelRun": True}]
    cancelled = [e for e in outcome.events if e.event_type == "RunCancelled"]
    assert [e.payload for e in cancelled] == [{"reason": "by port"}]


async def test_a_condition_that_never_holds_fails_with_the_run_state() -> None:
    from contract_tests.scenarios import Scenario, ScenarioError, execute_scenario

    scenario = Scenario.from_document({
        "scenarioId": "never",
        "plan": "one-step.json",
        "actions": [{"when": {"stepId": "hello", "status": "FAILED"},
                     "signal": {"type": "PAUSE"}}],
        "expect": {"status": "COMPLETED"},
    })
    side = reference_side()
    try:
        with pytest.raises(ScenarioError, match="ended \\(COMPLETED\\) before the condition"):
            await execute_scenario(scenario, side.engine, side.store, timeout=20)
    finally:
        await side.engine.close()


def test_conditions_match_run_and_step_fields() -> None:
    from contract_tests.scenarios import Condition

    h = header("run-c")
    f = EventFactory(h, "engine")
    events = [e.model_copy(update={"run_seq": i + 1, "persisted_at": EPOCH}) for i, e in
              enumerate([f.run_event("RunStarted", {"engine": "reference"}),
                         f.step_event("StepStarted", "a", {"kind": "approval"}),
                         f.step_event("StepAwaitingApproval", "a", {})])]
    snap = project(h, events)
    assert Condition({"stepId": "a", "substatus": "AWAITING_APPROVAL"}).holds(snap)
    assert Condition({"runStatus": "RUNNING", "runSubstatus": None}).holds(snap)
    assert Condition({"stepId": "a", "logicalAttemptId": 1, "status": "RUNNING"}).holds(snap)
    assert not Condition({"stepId": "a", "substatus": None}).holds(snap)
    assert not Condition({"stepId": "b", "status": "PENDING", "logicalAttemptId": 2}).holds(snap)
    assert not Condition({"stepId": "missing"}).holds(snap)
    assert not Condition({"runStatus": "PAUSED"}).holds(snap)


def test_order_intent_across_streams() -> None:
    from contract_tests.expected import _order_problems

    events = [NormalizedEvent("RunPaused", None, 1), NormalizedEvent("StepStarted", "b", 1),
              NormalizedEvent("RunResumed", None, 1)]
    rule = {"first": {"eventType": "RunResumed"},
            "then": {"eventType": "StepStarted", "stepId": "b"}}
    assert _order_problems(events, rule) != []
    assert _order_problems([events[0], events[2], events[1]], rule) == []
    assert "missing" in _order_problems(events[:2], rule)[0]
