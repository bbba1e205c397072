"""The engine contract suite's harness: what a subclass provides and what its tests share.

See :mod:`contract_tests.engine_suite` for how an adapter runs the suite.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from contract_tests.scenarios import (
    EngineSide,
    Scenario,
    make_context,
    make_plan_ref,
    wait_until,
)
from dvt_engine.errors import DvtError
from dvt_engine.models.events import Event
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import EngineRunRef, RunContext
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

    async def wait_for_log(self, predicate: Callable[[list[Event]], bool],
                           what: str) -> list[Event]:
        """Wait until the run's log satisfies ``predicate``, re-checked after each new event."""
        store = self.harness.store
        events = await self.events()
        if predicate(events):
            return events
        last = (events[-1].run_seq or 0) if events else 0
        try:
            async with asyncio.timeout(self.harness.capabilities.timeout):
                async for event in store.follow(self.tenant_id, self.run_id, after_seq=last):
                    events.append(event)
                    if predicate(events):
                        return events
        except TimeoutError:
            pass
        raise AssertionError(f"timed out waiting for {what}; the log has {len(events)} events")

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


def scenario_for(plan: dict[str, Any], **context: Any) -> Scenario:
    """A one-off scenario for ``plan`` (context keys override the scenario's defaults)."""
    data = json.dumps(plan, indent=2).encode("utf-8")
    scenario = Scenario.for_plan(data, str(plan["metadata"]["planId"]))
    if context:
        scenario = Scenario(scenario.scenario_id, scenario.description, data, scenario.plan_name,
                            {**scenario.context, **context}, scenario.plan_ref, (), {})
    return scenario


def event_types(events: list[Event], step_id: str | None = None) -> list[str]:
    """The event types of a log (of one step's events when ``step_id`` is given), in order."""
    return [e.event_type for e in events if step_id is None or e.step_id == step_id]


GATE_PLAN = plan_document("suite-gate", [
    {"stepId": "prepare", "kind": "noop"},
    {"stepId": "gate", "kind": "approval", "dependsOn": ["prepare"]},
    {"stepId": "after", "kind": "echo", "dependsOn": ["gate"], "params": {"done": True}},
])



class EngineSuiteBase:
    """The fixture every engine provides, and the helpers the suite's tests share."""

    @pytest.fixture
    def engine_harness(self) -> EngineHarness:
        """Provided by the subclass: the engine under test, its store and declared traits."""
        raise NotImplementedError(
            "subclass EngineContractSuite and define an engine_harness fixture")

    # --- helpers ------------------------------------------------------------------------
    async def start(self, h: EngineHarness, plan: dict[str, Any], **context: Any) -> Started:
        """Store ``plan`` in the registry and start it with a fresh run id."""
        scenario = scenario_for(plan, **context)
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
        scenario = scenario_for(plan or GATE_PLAN)
        ctx: Any = make_context(scenario)
        if context:
            # A mapping reaches the engine unvalidated, as it would from JSON or another process.
            ctx = {**ctx.model_dump(mode="json", by_alias=True), **context}
        ref = plan_ref or await make_plan_ref(scenario, h.store)
        with pytest.raises(DvtError) as info:
            await h.engine.start_run(ref, ctx)
        return info.value

    async def approve_gate(self, run: Started) -> None:
        """Approve the GATE_PLAN run's gate."""
        decision = await run.signal(SignalType.APPROVE_STEP, APPROVER,
                                    {"stepId": "gate", "decision": "approve"})
        assert decision.accepted, decision
