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


@pytest.mark.parametrize("scenario_id", scenario_ids())
async def test_golden_scenario_on_postgres_matches_the_expected_result(
    scenario_id: str, pg_store: PostgresRunStateStore
) -> None:
    scenario = get_scenario(scenario_id)
    engine = open_engine("reference", store=pg_store)
    try:
        outcome = await execute_scenario(scenario, engine, pg_store)
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
