"""Driving a golden scenario on one engine: start the run, fire each action when its condition
holds on the run's snapshot (never on a timer), wait for the end and record the run."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from contract_tests.catalogue import Scenario, ScenarioError
from contract_tests.records import NormalizedEvent, RunRecord
from dvt_engine.checksum import parity_form, snapshot_checksum
from dvt_engine.errors import DvtError
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import EngineRunRef, RunContext
from dvt_engine.models.signals import Actor, SignalRequest, SignalType
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore, WorkflowEngine
from dvt_engine.waiting import wait_for_snapshot

# --- driving ---------------------------------------------------------------------------------


@dataclass
class ScenarioOutcome:
    """What happened when a scenario was driven on one engine."""

    scenario_id: str
    run_id: str
    tenant_id: str
    error: dict[str, Any] | None = None
    run_ref: EngineRunRef | None = None
    record: RunRecord | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] | None = None

    @property
    def snapshot(self) -> RunSnapshot:
        """The final snapshot (only for a run that started)."""
        if self.record is None:
            raise ScenarioError(f"{self.scenario_id}: the run was refused: {self.error}")
        return self.record.snapshot

    @property
    def checksum(self) -> str | None:
        """The final snapshot checksum, or None for a refused run."""
        return snapshot_checksum(self.record.snapshot) if self.record else None

    @property
    def events(self) -> tuple[NormalizedEvent, ...]:
        """The normalized log (empty for a refused run)."""
        return self.record.events if self.record else ()

    def to_expected(self, engine: str) -> dict[str, Any]:
        """The expectation document written by ``--regenerate``."""
        data: dict[str, Any] = {"scenarioId": self.scenario_id, "generatedWith": engine}
        if self.validation is not None:
            data["validation"] = self.validation
        if self.error is not None:
            data["error"] = {"code": self.error["code"]}
            return data
        snap = self.snapshot
        data.update(
            {
                "status": str(snap.status),
                "snapshotChecksum": snapshot_checksum(snap),
                "decisions": self.decisions,
                "parityForm": parity_form(snap),
                "events": [e.to_dict() for e in self.events],
            }
        )
        return data


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def make_plan_ref(scenario: Scenario, store: RunStateStore) -> PlanRef:
    """Build the PlanRef the scenario asks for (registry, tampered digest, or a given URI)."""
    recipe = scenario.plan_ref
    kind = recipe.get("kind", "registry")
    meta = scenario.plan.get("metadata", {})
    data = scenario.plan_bytes
    digest = _digest(data)
    if kind == "registry":
        uri = await store.put_plan(data)
    elif kind == "tampered":
        # The registry holds the real bytes; the reference promises another digest.
        uri = await store.put_plan(data)
        digest = _digest(data + b"\n#tampered")
    elif kind == "uri":
        uri = str(recipe["uri"])
    else:
        raise ScenarioError(f"{scenario.scenario_id}: unknown planRef kind {kind!r}")
    return PlanRef(
        uri=uri,
        sha256=digest,
        schema_version=str(meta.get("schemaVersion", "")),
        plan_id=str(meta.get("planId", "")),
        plan_version=str(meta.get("planVersion", "")),
        size_bytes=len(data),
    )


def make_context(scenario: Scenario, run_id: str | None = None) -> RunContext:
    """The RunContext of one execution: the scenario's identity plus fresh run ids."""
    fresh = uuid.uuid4().hex[:12]
    ctx = dict(scenario.context)
    ctx.setdefault("runId", f"{scenario.scenario_id}-{fresh}")
    if run_id is not None:
        ctx["runId"] = run_id
    ctx.setdefault("runRequestId", f"{ctx['runId']}-request")
    return RunContext.model_validate(ctx)


def signal_request(
    spec: Mapping[str, Any], tenant_id: str, run_id: str
) -> SignalRequest:
    """The SignalRequest an action's ``signal`` describes."""
    return SignalRequest(
        signal_id=str(spec["signalId"]),
        type=SignalType(spec["type"]),
        tenant_id=str(spec.get("tenantId", tenant_id)),
        run_id=run_id,
        payload=dict(spec.get("payload", {})),
        actor=Actor.model_validate(spec.get("actor", {"id": "ops", "roles": ["admin"]})),
    )


def decision_summary(decision: Any) -> dict[str, Any]:
    """The engine-independent part of a SignalDecision."""
    return {
        "signalId": decision.signal_id,
        "type": str(decision.type),
        "accepted": decision.accepted,
        "errorCode": decision.error_code,
        "noOp": decision.no_op,
    }


async def wait_until(
    store: RunStateStore,
    tenant_id: str,
    run_id: str,
    predicate: Callable[[RunSnapshot], bool],
    *,
    timeout: float,
    what: str,
) -> RunSnapshot:
    """Wait for ``predicate`` (or the run's end, which fails unless the predicate holds)."""
    try:
        snap = await wait_for_snapshot(
            store, tenant_id, run_id, lambda s: predicate(s) or s.status.is_terminal,
            timeout=timeout,
        )
    except TimeoutError as exc:
        raise ScenarioError(f"{what}: {exc}") from None
    if not predicate(snap):
        raise ScenarioError(
            f"{what}: the run ended ({snap.status}) before the condition held; steps: "
            + ", ".join(f"{s.step_id}={s.status}" for s in snap.steps)
        )
    return snap


async def execute_scenario(
    scenario: Scenario,
    engine: WorkflowEngine,
    store: RunStateStore,
    *,
    run_id: str | None = None,
    timeout: float | None = None,
) -> ScenarioOutcome:
    """Drive ``scenario`` on ``engine`` (whose runs land in ``store``) until the run ends."""
    limit = timeout if timeout is not None else scenario.timeout
    context = make_context(scenario, run_id)
    outcome = ScenarioOutcome(scenario.scenario_id, context.run_id, context.tenant_id)
    if scenario.validate:
        outcome.validation = await validation_summary(engine, scenario)
    plan_ref = await make_plan_ref(scenario, store)
    try:
        outcome.run_ref = await engine.start_run(plan_ref, context)
    except DvtError as exc:
        outcome.error = exc.to_dict()
        return outcome
    tenant, rid = context.tenant_id, context.run_id
    for index, action in enumerate(scenario.actions):
        await wait_until(store, tenant, rid, action.holds, timeout=limit,
                         what=f"{scenario.scenario_id} action {index + 1} ({action.describe()})")
        if action.signal is not None:
            decision = await engine.signal(outcome.run_ref,
                                           signal_request(action.signal, tenant, rid))
            outcome.decisions.append(decision_summary(decision))
        else:
            reason = (action.cancel_run or {}).get("reason")
            await engine.cancel_run(outcome.run_ref, reason)
            outcome.decisions.append({"cancelRun": True})
    await wait_until(store, tenant, rid, lambda s: s.status.is_terminal, timeout=limit,
                     what=f"{scenario.scenario_id}: waiting for the run to end")
    record = await RunRecord.from_store(engine.name, store, tenant, rid)
    outcome.record = dataclasses.replace(record, needed=join_needed(scenario.plan))
    return outcome


def join_needed(plan: Mapping[str, Any]) -> dict[str, int]:
    """Steps of a plan document whose join needs fewer than all dependencies, with how many."""
    found: dict[str, int] = {}
    for step in plan.get("steps", ()):
        if not isinstance(step, dict) or "join" not in step:
            continue
        join, deps = step["join"], len(step.get("dependsOn", ()))
        mode = join if isinstance(join, str) else join.get("mode", "all")
        if mode == "any":
            found[step["stepId"]] = min(1, deps)
        elif mode == "quorum" and isinstance(join, dict):
            found[step["stepId"]] = min(int(join.get("count") or deps), deps)
    return found


async def validation_summary(engine: WorkflowEngine, scenario: Scenario) -> dict[str, Any]:
    """The engine-independent part of ``engine.validate(plan)``."""
    from dvt_engine.models.plan import ExecutionPlan

    report = await engine.validate(ExecutionPlan.model_validate(scenario.plan))
    caps = report.capabilities
    return {
        "ok": report.ok,
        "errors": sorted({i.code for i in report.errors}),
        "warnings": sorted({i.code for i in report.warnings}),
        "capabilityResolution": caps.resolution if caps else None,
        "missingCapabilities": sorted(caps.missing) if caps else [],
    }
