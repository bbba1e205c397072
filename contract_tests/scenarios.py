"""Golden scenarios: loading them, driving them on an engine, and their expected results.

A scenario (``golden_fixtures/scenarios/<id>.json``, format in docs/parity.md) names a plan, the
run's identity, how the PlanRef is made, the actions to take (each fired by a condition on the
run's snapshot, never by a timer) and the outcome its author intends. Its expected result
(``golden_fixtures/expected/<id>.json``) is generated from the reference engine with::

    python -m contract_tests.scenarios --regenerate [ID ...]

and reviewed by a person before it is committed. Tests compare fresh runs with it;
``--check [ID ...]`` does the same comparison from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract_tests.parity import (
    Difference,
    NormalizedEvent,
    RunRecord,
    compare_event_logs,
    dag_violations,
)
from dvt_engine.checksum import parity_form, snapshot_checksum
from dvt_engine.errors import DvtError
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import EngineRunRef, RunContext
from dvt_engine.models.signals import Actor, SignalRequest, SignalType
from dvt_engine.models.snapshot import RunSnapshot, StepSnapshot
from dvt_engine.ports import RunStateStore, WorkflowEngine
from dvt_engine.waiting import wait_for_snapshot

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
            step = _find_step(snapshot, str(s["stepId"]))
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


def _find_step(snapshot: RunSnapshot, step_id: str) -> StepSnapshot | None:
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
    outcome.record = await RunRecord.from_store(engine.name, store, tenant, rid)
    return outcome


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


# --- checking --------------------------------------------------------------------------------


def check_intent(scenario: Scenario, outcome: ScenarioOutcome) -> list[str]:
    """Differences between an outcome and what the scenario's author says it must be."""
    problems: list[str] = []
    intent = scenario.intent
    if "error" in intent:
        want = intent["error"]["code"]
        got = outcome.error["code"] if outcome.error else None
        if got != want:
            problems.append(f"expected start_run to be refused with {want}, got {got or 'a run'}")
        return problems
    if outcome.error is not None:
        return [f"start_run was refused with {outcome.error['code']}: {outcome.error['message']}"]
    snap = outcome.snapshot
    if "status" in intent and str(snap.status) != intent["status"]:
        problems.append(f"run status {snap.status}, intended {intent['status']}")
    if "failure" in intent:
        failure = snap.failure.model_dump(mode="json") if snap.failure else None
        for key, value in intent["failure"].items():
            if failure is None or failure.get(key) != value:
                problems.append(f"run failure {failure}, intended {key}={value!r}")
    for step_id, want in intent.get("steps", {}).items():
        step = _find_step(snap, step_id)
        if step is None:
            problems.append(f"step {step_id} is missing")
            continue
        want_spec = want if isinstance(want, Mapping) else {"status": want}
        got = step.model_dump(mode="json")
        for key, value in want_spec.items():
            actual = got.get(key)
            if key == "error" and isinstance(actual, Mapping) and isinstance(value, Mapping):
                actual = {k: actual.get(k) for k in value}
            if actual != value:
                problems.append(f"step {step_id}: {key}={actual!r}, intended {value!r}")
    for index, want in enumerate(intent.get("decisions", [])):
        if index >= len(outcome.decisions):
            problems.append(f"decision {index + 1} missing")
            continue
        got = outcome.decisions[index]
        for key, value in want.items():
            if got.get(key) != value:
                problems.append(f"decision {index + 1}: {key}={got.get(key)!r}, intended {value!r}")
    for rule in intent.get("order", []):
        problems.extend(_order_problems(outcome.events, rule))
    for event_type, count in intent.get("eventCounts", {}).items():
        actual = sum(1 for e in outcome.events if e.event_type == event_type)
        if actual != count:
            problems.append(f"{actual} {event_type} events, intended {count}")
    if outcome.validation is not None and "validation" in intent:
        for key, value in intent["validation"].items():
            if outcome.validation.get(key) != value:
                problems.append(
                    f"validation {key}={outcome.validation.get(key)!r}, intended {value!r}")
    return problems


def _matches(event: NormalizedEvent, spec: Mapping[str, Any]) -> bool:
    return event.event_type == spec.get("eventType") and (
        "stepId" not in spec or event.step_id == spec["stepId"])


def _order_problems(events: Sequence[NormalizedEvent], rule: Mapping[str, Any]) -> list[str]:
    """``{"first": {eventType, stepId?}, "then": {...}}``: the first match of ``then`` comes
    after the first match of ``first`` (an order across streams that parity alone ignores)."""
    first = next((i for i, e in enumerate(events) if _matches(e, rule["first"])), None)
    then = next((i for i, e in enumerate(events) if _matches(e, rule["then"])), None)
    if first is None or then is None:
        return [f"order {dict(rule)}: an event is missing"]
    if then < first:
        return [f"order {dict(rule)}: {rule['then']} came before {rule['first']}"]
    return []


def compare_with_expected(
    outcome: ScenarioOutcome, expected: Mapping[str, Any], label: str = "engine"
) -> list[Difference]:
    """Parity differences between a fresh outcome and the generated expectation."""
    labels = ("expected", label)
    if "error" in expected or outcome.error is not None:
        want = expected.get("error", {}).get("code")
        got = outcome.error["code"] if outcome.error else None
        if want != got:
            return [Difference("error", f"start_run: expected {want or 'a run'}, "
                                        f"{label} gave {got or 'a run'}")]
        return []
    differences: list[Difference] = []
    snap = outcome.snapshot
    if str(snap.status) != expected["status"]:
        differences.append(Difference("status", f"status {snap.status}, expected "
                                                f"{expected['status']}"))
    checksum = snapshot_checksum(snap)
    if checksum != expected["snapshotChecksum"]:
        differences.append(Difference(
            "checksum", f"checksum {checksum}, expected {expected['snapshotChecksum']}; "
                        "parity form diff:\n" + _json_diff(expected["parityForm"],
                                                           parity_form(snap))))
    want_events = [NormalizedEvent.from_dict(e) for e in expected["events"]]
    differences.extend(compare_event_logs(want_events, list(outcome.events), labels))
    assert outcome.record is not None
    for problem in dag_violations(outcome.events, outcome.record.dependencies):
        differences.append(Difference("dag", problem, side=label))
    if outcome.decisions != expected.get("decisions", []):
        differences.append(Difference(
            "decision", f"decisions {outcome.decisions}, expected {expected.get('decisions')}"))
    if "validation" in expected and outcome.validation != expected["validation"]:
        differences.append(Difference(
            "validation", f"validation {outcome.validation}, expected {expected['validation']}"))
    return differences


def _json_diff(a: Any, b: Any) -> str:
    import difflib

    la = json.dumps(a, indent=2, sort_keys=True).splitlines()
    lb = json.dumps(b, indent=2, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(la, lb, "expected", "actual", lineterm=""))


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


# --- command line ----------------------------------------------------------------------------


async def _regenerate(ids: Sequence[str], *, dry_run: bool) -> int:
    from dvt_engine.plugins import open_engine
    from dvt_engine.stores.memory import MemoryRunStateStore

    selected = [get_scenario(i) for i in ids] if ids else load_scenarios()
    failures = 0
    for scenario in selected:
        store = MemoryRunStateStore()
        engine = open_engine("reference", store=store)
        try:
            outcome = await execute_scenario(scenario, engine, store)
        finally:
            await engine.close()
        problems = check_intent(scenario, outcome)
        if outcome.record is not None:
            problems += dag_violations(outcome.events, outcome.record.dependencies)
        if problems:
            failures += 1
            print(f"NOT WRITTEN {scenario.scenario_id}:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            continue
        expected = outcome.to_expected("reference")
        if dry_run:
            print(json.dumps(expected, indent=2, sort_keys=True))
        else:
            EXPECTED_DIR.mkdir(parents=True, exist_ok=True)
            write_json(scenario.expected_path, expected)
            print(f"wrote {scenario.expected_path.relative_to(GOLDEN_DIR.parent)}")
    return 1 if failures else 0


async def _check(ids: Sequence[str]) -> int:
    from dvt_engine.plugins import open_engine
    from dvt_engine.stores.memory import MemoryRunStateStore

    selected = [get_scenario(i) for i in ids] if ids else load_scenarios()
    failures = 0
    for scenario in selected:
        store = MemoryRunStateStore()
        engine = open_engine("reference", store=store)
        try:
            outcome = await execute_scenario(scenario, engine, store)
        finally:
            await engine.close()
        problems = check_intent(scenario, outcome)
        problems += [f"[{d.kind}] {d.message}"
                     for d in compare_with_expected(outcome, scenario.expected, "reference")]
        print(f"{'ok  ' if not problems else 'DIFF'} {scenario.scenario_id}")
        for p in problems:
            print(f"     {p}")
        failures += bool(problems)
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m contract_tests.scenarios``: list, regenerate expectations, write plans."""
    parser = argparse.ArgumentParser(prog="python -m contract_tests.scenarios",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="scenario ids (default: all)")
    parser.add_argument("--regenerate", action="store_true",
                        help="run on the reference engine and write golden_fixtures/expected/")
    parser.add_argument("--dry-run", action="store_true", help="print instead of writing")
    parser.add_argument("--check", action="store_true",
                        help="run on the reference engine and compare with the expectations")
    parser.add_argument("--write-plans", action="store_true",
                        help="write the generated plans (chain-250, parallel-50)")
    args = parser.parse_args(argv)
    if args.write_plans:
        for name, plan in generated_plans().items():
            write_json(PLANS_DIR / name, plan)
            print(f"wrote golden_fixtures/plans/{name}")
    if args.regenerate:
        return asyncio.run(_regenerate(args.ids, dry_run=args.dry_run))
    if args.check:
        return asyncio.run(_check(args.ids))
    if not args.write_plans:
        for scenario in load_scenarios():
            print(f"{scenario.scenario_id:32} {scenario.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
