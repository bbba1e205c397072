"""The golden scenario catalogue: what a scenario is and where the golden files are.

A scenario (``golden_fixtures/scenarios/<id>.json``, format in docs/parity.md) names a plan, the
run's identity, how the PlanRef is made, the actions to take (each fired by a condition on the
run's snapshot, never by a timer) and the outcome its author intends. This module reads them;
``contract_tests.driver`` drives one on an engine and ``contract_tests.expected`` checks the
result. ``contract_tests.scenarios`` gathers all three for callers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvt_engine.models.snapshot import RunSnapshot, StepSnapshot
from dvt_engine.ports import RunStateStore, WorkflowEngine

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden_fixtures"
PLANS_DIR = GOLDEN_DIR / "plans"
SCENARIOS_DIR = GOLDEN_DIR / "scenarios"
EXPECTED_DIR = GOLDEN_DIR / "expected"

DEFAULT_CONTEXT: Mapping[str, Any] = {
    "tenantId": "acme",
    "projectId": "analytics",
    "environmentId": "dev",
    "triggeredBy": "golden-scenario",
}
DEFAULT_TIMEOUT = 60.0


class ScenarioError(AssertionError):
    """A scenario could not be driven as written (a condition never held, a bad file)."""


@dataclass(frozen=True)
class EngineSide:
    """One engine under comparison, over its own store."""

    engine: WorkflowEngine
    store: RunStateStore
    name: str | None = None

    @property
    def label(self) -> str:
        """How reports name this side."""
        return self.name or self.engine.name


@dataclass(frozen=True)
class Condition:
    """A predicate on a run's snapshot; every key given must hold.

    ``stepId`` with ``status``/``substatus``/``logicalAttemptId`` test that step;
    ``runStatus``/``runSubstatus`` test the run. ``substatus: null`` means "no substatus".
    """

    spec: Mapping[str, Any]

    def holds(self, snapshot: RunSnapshot) -> bool:
        """True when the snapshot satisfies every clause."""
        s = self.spec
        if "runStatus" in s and snapshot.status != s["runStatus"]:
            return False
        if "runSubstatus" in s and snapshot.substatus != s["runSubstatus"]:
            return False
        if "stepId" in s:
            step = find_step(snapshot, str(s["stepId"]))
            if step is None:
                return False
            if "status" in s and step.status != s["status"]:
                return False
            if "substatus" in s and step.substatus != s["substatus"]:
                return False
            if "logicalAttemptId" in s and step.logical_attempt_id != s["logicalAttemptId"]:
                return False
        return True

    def describe(self) -> str:
        """The condition as written, for messages."""
        return json.dumps(dict(self.spec), sort_keys=True)


def find_step(snapshot: RunSnapshot, step_id: str) -> StepSnapshot | None:
    """The step of a snapshot with this id, or None."""
    for step in snapshot.steps:
        if step.step_id == step_id:
            return step
    return None


@dataclass(frozen=True)
class Action:
    """One thing to do to the run once its conditions hold: a signal, or cancel_run."""

    when: tuple[Condition, ...]
    signal: Mapping[str, Any] | None = None
    cancel_run: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any], index: int) -> Action:
        """Read one action of a scenario file."""
        raw_when = data.get("when", [])
        conditions = raw_when if isinstance(raw_when, list) else [raw_when]
        signal = data.get("signal")
        cancel = data.get("cancelRun")
        if (signal is None) == (cancel is None):
            raise ScenarioError(f"action {index + 1} needs exactly one of 'signal', 'cancelRun'")
        if signal is not None:
            signal = {"signalId": f"signal-{index + 1}", **signal}
        return cls(tuple(Condition(c) for c in conditions), signal, cancel)

    def holds(self, snapshot: RunSnapshot) -> bool:
        """True when every condition holds."""
        return all(c.holds(snapshot) for c in self.when)

    def describe(self) -> str:
        """The action for messages."""
        what = f"signal {self.signal.get('type')}" if self.signal else "cancel_run"
        return f"{what} when {[c.describe() for c in self.when]}"


@dataclass(frozen=True)
class Scenario:
    """One golden scenario: plan, identity, PlanRef recipe, actions and intended outcome."""

    scenario_id: str
    description: str
    plan_bytes: bytes
    plan_name: str
    context: Mapping[str, Any]
    plan_ref: Mapping[str, Any]
    actions: tuple[Action, ...]
    intent: Mapping[str, Any]
    timeout: float = DEFAULT_TIMEOUT
    validate: bool = False

    @property
    def plan(self) -> dict[str, Any]:
        """The plan document."""
        data: dict[str, Any] = json.loads(self.plan_bytes)
        return data

    @property
    def expected_path(self) -> Path:
        """Where the generated expectation lives."""
        return EXPECTED_DIR / f"{self.scenario_id}.json"

    @property
    def expected(self) -> dict[str, Any]:
        """The reviewed expected result (FileNotFoundError before it is generated)."""
        data: dict[str, Any] = json.loads(self.expected_path.read_text(encoding="utf-8"))
        return data

    @classmethod
    def from_document(cls, data: Mapping[str, Any], *, base: Path = SCENARIOS_DIR) -> Scenario:
        """Build a scenario from its JSON document; ``plan`` is a file under plans/."""
        try:
            scenario_id = str(data["scenarioId"])
            plan_entry = data["plan"]
        except KeyError as exc:
            raise ScenarioError(f"scenario document lacks {exc.args[0]!r}") from None
        if isinstance(plan_entry, str):
            path = (PLANS_DIR / plan_entry) if not Path(plan_entry).is_absolute() else Path(
                plan_entry)
            plan_bytes = path.read_bytes()
            plan_name = plan_entry
        else:
            plan_bytes = json.dumps(plan_entry, indent=2).encode("utf-8")
            plan_name = "(inline)"
        return cls(
            scenario_id=scenario_id,
            description=str(data.get("description", "")),
            plan_bytes=plan_bytes,
            plan_name=plan_name,
            context={**DEFAULT_CONTEXT, **data.get("context", {})},
            plan_ref=data.get("planRef", {"kind": "registry"}),
            actions=tuple(Action.parse(a, i) for i, a in enumerate(data.get("actions", []))),
            intent=data.get("expect", {}),
            timeout=float(data.get("timeoutSeconds", DEFAULT_TIMEOUT)),
            validate=bool(data.get("validate", False)),
        )

    @classmethod
    def load(cls, path: Path) -> Scenario:
        """Read a scenario file."""
        return cls.from_document(json.loads(path.read_text(encoding="utf-8")), base=path.parent)

    @classmethod
    def for_plan(cls, plan_bytes: bytes, name: str = "plan") -> Scenario:
        """A scenario that just runs a plan to its end, with no actions."""
        plan = json.loads(plan_bytes)
        scenario_id = str(plan.get("metadata", {}).get("planId", name))
        return cls(scenario_id, f"run {name}", plan_bytes, name, dict(DEFAULT_CONTEXT),
                   {"kind": "registry"}, (), {})


def as_scenario(value: Scenario | Mapping[str, Any] | str | Path) -> Scenario:
    """Accept a Scenario, a scenario or plan document, or a path to either."""
    if isinstance(value, Scenario):
        return value
    if isinstance(value, str | Path):
        path = Path(value)
        raw = path.read_bytes()
        data = json.loads(raw)
        if "scenarioId" in data:
            return Scenario.from_document(data, base=path.parent)
        return Scenario.for_plan(raw, path.name)
    if "scenarioId" in value:
        return Scenario.from_document(value)
    return Scenario.for_plan(json.dumps(dict(value), indent=2).encode("utf-8"))


def load_scenarios(directory: Path = SCENARIOS_DIR) -> list[Scenario]:
    """Every golden scenario, sorted by id."""
    found = [Scenario.load(p) for p in sorted(directory.glob("*.json"))]
    return sorted(found, key=lambda s: s.scenario_id)


def scenario_ids(directory: Path = SCENARIOS_DIR) -> list[str]:
    """The ids of every golden scenario (for test parametrisation)."""
    return [p.stem for p in sorted(directory.glob("*.json"))]


def get_scenario(scenario_id: str) -> Scenario:
    """The golden scenario with this id."""
    path = SCENARIOS_DIR / f"{scenario_id}.json"
    if not path.is_file():
        raise ScenarioError(f"no golden scenario named {scenario_id!r}")
    return Scenario.load(path)


# --- generated plans -------------------------------------------------------------------------


def _metadata(plan_id: str, **extra: Any) -> dict[str, Any]:
    return {"planId": plan_id, "planVersion": "1.0.0", "schemaVersion": "v1.2", **extra}


def generated_plans() -> dict[str, dict[str, Any]]:
    """Plans too large to write by hand, produced by ``--write-plans``."""
    chain: list[dict[str, Any]] = [{"stepId": "s001", "kind": "noop"}]
    chain += [
        {"stepId": f"s{i:03d}", "kind": "noop", "dependsOn": [f"s{i - 1:03d}"]}
        for i in range(2, 251)
    ]
    parallel: list[dict[str, Any]] = [{"stepId": "start", "kind": "noop"}]
    parallel += [
        {"stepId": f"p{i:02d}", "kind": "echo", "dependsOn": ["start"], "params": {"n": i}}
        for i in range(1, 51)
    ]
    parallel.append(
        {"stepId": "gather", "kind": "noop", "dependsOn": [f"p{i:02d}" for i in range(1, 51)]}
    )
    return {
        "chain-250.json": {
            "metadata": _metadata("chain-250", description="250 noop steps in one chain"),
            "steps": chain,
        },
        "parallel-50.json": {
            "metadata": _metadata(
                "parallel-50",
                requiresCapabilities=["workflow.fan.parallel"],
                description="50 parallel echo steps between one start and one gather",
            ),
            "steps": parallel,
        },
    }


def write_json(path: Path, data: Any) -> None:
    """Write JSON the way golden files are kept: two-space indent, sorted keys, newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")
