"""Every golden scenario on a real Temporal dev server: the author's intent, and parity with the
reference engine's recorded result (snapshot checksum and equivalent event log)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from contract_tests.scenarios import (
    check_intent,
    compare_with_expected,
    execute_scenario,
    get_scenario,
    scenario_ids,
)
from dvt_adapters_temporal.engine import TemporalEngine
from dvt_engine.stores.memory import MemoryRunStateStore

IDS = scenario_ids()


@pytest_asyncio.fixture(loop_scope="session")
async def side(temporal_env: WorkflowEnvironment) -> AsyncIterator[TemporalEngine]:
    """A Temporal engine over a fresh store; small continue-as-new budget to exercise it."""
    engine = TemporalEngine(
        MemoryRunStateStore(),
        address=temporal_env.client.service_client.config.target_host,
        task_queue=f"golden-{uuid.uuid4().hex[:8]}",
        continue_as_new_after_steps=50,
    )
    try:
        yield engine
    finally:
        await engine.close()


def test_every_golden_scenario_is_collected() -> None:
    assert len(IDS) >= 20


@pytest.mark.parametrize("scenario_id", IDS)
async def test_golden_scenario(side: TemporalEngine, scenario_id: str) -> None:
    scenario = get_scenario(scenario_id)
    outcome = await execute_scenario(scenario, side, side.store)
    assert check_intent(scenario, outcome) == []
    expected_path = scenario.expected_path
    if not expected_path.exists():
        pytest.fail(f"no reference result for {scenario_id}: generate it with "
                    "`python -m contract_tests.scenarios --regenerate`")
    differences = compare_with_expected(outcome, scenario.expected, label="temporal")
    assert [d.to_dict() for d in differences] == []
