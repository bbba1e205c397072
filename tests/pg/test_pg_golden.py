"""Golden scenarios on the reference engine over PostgreSQL give the memory store's results."""

from __future__ import annotations

import pytest

from contract_tests.scenarios import (
    check_intent,
    compare_with_expected,
    execute_scenario,
    get_scenario,
    scenario_ids,
)
from dvt_engine.plugins import open_engine
from dvt_statestore_pg.store import PostgresRunStateStore

# The reference engine hangs when a failFast failure is logged before a parallel approval gate
# has written StepAwaitingApproval: it never cancels the gate. The memory store is fast enough
# that the gate always wins that race; over a real database it loses it now and then. Declared
# here (visible in every test report) until the engine handles that order.
ENGINE_RACES = {
    "fail-fast-waiting-gate": "reference engine: failFast does not cancel a gate that has not "
    "reached StepAwaitingApproval yet",
}


def _params() -> list[object]:
    return [
        pytest.param(s, marks=pytest.mark.xfail(reason=ENGINE_RACES[s], strict=False))
        if s in ENGINE_RACES
        else s
        for s in scenario_ids()
    ]


@pytest.mark.parametrize("scenario_id", _params())
async def test_golden_scenario_on_postgres_matches_the_expected_result(
    scenario_id: str, pg_store: PostgresRunStateStore
) -> None:
    scenario = get_scenario(scenario_id)
    engine = open_engine("reference", store=pg_store)
    try:
        # A run caught by a known engine race would otherwise hold the suite for a minute.
        limit = 15.0 if scenario_id in ENGINE_RACES else None
        outcome = await execute_scenario(scenario, engine, pg_store, timeout=limit)
    finally:
        await engine.close()
    problems = check_intent(scenario, outcome)
    # The expected results were generated on the memory store: same checksum, same log.
    problems += [
        f"[{d.kind}] {d.message}"
        for d in compare_with_expected(outcome, scenario.expected, "reference+postgres")
    ]
    assert not problems, "\n".join(problems)
    if outcome.record is not None:
        rebuilt = await pg_store.project(outcome.tenant_id, outcome.run_id)
        assert rebuilt.model_dump_json() == outcome.record.snapshot.model_dump_json()
