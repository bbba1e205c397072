"""Golden scenarios: the catalogue, driving one on an engine, and checking its result.

A scenario (``golden_fixtures/scenarios/<id>.json``, format in docs/parity.md) names a plan, the
run's identity, how the PlanRef is made, the actions to take (each fired by a condition on the
run's snapshot, never by a timer) and the outcome its author intends. Its expected result
(``golden_fixtures/expected/<id>.json``) is generated from the reference engine with::

    python -m contract_tests.scenarios --regenerate [ID ...]

and reviewed by a person before it is committed. Tests compare fresh runs with it;
``--check [ID ...]`` does the same comparison from the command line.

The work is split by job - ``catalogue`` (reading scenarios, the golden paths, generated
plans), ``driver`` (running one on an engine) and ``expected`` (intent and expectation checks,
the command line) - and gathered here so callers import scenarios from one place.
"""

from __future__ import annotations

import sys

from contract_tests.catalogue import (
    DEFAULT_CONTEXT,
    DEFAULT_TIMEOUT,
    EXPECTED_DIR,
    GOLDEN_DIR,
    PLANS_DIR,
    SCENARIOS_DIR,
    Action,
    Condition,
    EngineSide,
    Scenario,
    ScenarioError,
    as_scenario,
    find_step,
    generated_plans,
    get_scenario,
    load_scenarios,
    scenario_ids,
    write_json,
)
from contract_tests.driver import (
    ScenarioOutcome,
    decision_summary,
    execute_scenario,
    make_context,
    make_plan_ref,
    signal_request,
    validation_summary,
    wait_until,
)
from contract_tests.expected import (
    check_intent,
    compare_with_expected,
    main,
)

__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_TIMEOUT",
    "EXPECTED_DIR",
    "GOLDEN_DIR",
    "PLANS_DIR",
    "SCENARIOS_DIR",
    "Action",
    "Condition",
    "EngineSide",
    "Scenario",
    "ScenarioError",
    "ScenarioOutcome",
    "as_scenario",
    "check_intent",
    "compare_with_expected",
    "decision_summary",
    "execute_scenario",
    "find_step",
    "generated_plans",
    "get_scenario",
    "load_scenarios",
    "main",
    "make_context",
    "make_plan_ref",
    "scenario_ids",
    "signal_request",
    "validation_summary",
    "wait_until",
    "write_json",
]

if __name__ == "__main__":
    sys.exit(main())
