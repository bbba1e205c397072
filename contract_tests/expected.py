"""Checking a driven scenario: against its author's intent and against the expected result
generated from the reference engine (``golden_fixtures/expected/<id>.json``)::

    python -m contract_tests.scenarios --regenerate [ID ...]

writes the expectations, to be reviewed by a person before they are committed; tests compare
fresh runs with them, and ``--check [ID ...]`` does the same comparison from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from contract_tests.catalogue import (
    EXPECTED_DIR,
    GOLDEN_DIR,
    PLANS_DIR,
    Scenario,
    find_step,
    generated_plans,
    get_scenario,
    load_scenarios,
    write_json,
)
from contract_tests.driver import ScenarioOutcome, execute_scenario
from contract_tests.records import (
    Difference,
    NormalizedEvent,
    compare_event_logs,
    dag_violations,
)
from dvt_engine.checksum import parity_form, snapshot_checksum

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
        step = find_step(snap, step_id)
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
    for problem in dag_violations(outcome.events, outcome.record.dependencies,
                                     outcome.record.needed):
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


# --- command line ----------------------------------------------------------------------------


async def _on_reference(scenario: Scenario) -> ScenarioOutcome:
    from dvt_engine.plugins import open_engine
    from dvt_engine.stores.memory import MemoryRunStateStore

    store = MemoryRunStateStore()
    engine = open_engine("reference", store=store)
    try:
        return await execute_scenario(scenario, engine, store)
    finally:
        await engine.close()


async def _regenerate(ids: Sequence[str], *, dry_run: bool) -> int:
    selected = [get_scenario(i) for i in ids] if ids else load_scenarios()
    failures = 0
    for scenario in selected:
        outcome = await _on_reference(scenario)
        problems = check_intent(scenario, outcome)
        if outcome.record is not None:
            problems += dag_violations(outcome.events, outcome.record.dependencies,
                                     outcome.record.needed)
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
    selected = [get_scenario(i) for i in ids] if ids else load_scenarios()
    failures = 0
    for scenario in selected:
        outcome = await _on_reference(scenario)
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
