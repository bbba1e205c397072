"""Parity: the Conductor engine and the reference engine on the golden scenarios.

Every golden scenario is also checked against its reviewed expected result in the contract
suite (test_engine_contract.py), which covers the two long ones left out here for CI time.
"""

from __future__ import annotations

import pytest
from conductor_helpers import make_engine

from contract_tests.parity import run_parity
from contract_tests.scenarios import EngineSide, get_scenario, scenario_ids
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.stores.memory import MemoryRunStateStore

#: Long scenarios whose parity the contract suite's golden check already establishes.
LONG = {"chain-250", "parallel-50"}


@pytest.mark.parametrize("scenario_id", [s for s in scenario_ids() if s not in LONG])
async def test_conductor_matches_the_reference_engine(conductor_url: str, scenario_id: str) -> None:
    """Same checksum and an equivalent event log as the reference engine."""
    ref_store, cond_store = MemoryRunStateStore(), MemoryRunStateStore()
    reference = EngineSide(ReferenceEngine(ref_store), ref_store, "reference")
    conductor = EngineSide(make_engine(conductor_url, cond_store), cond_store, "conductor")
    try:
        report = await run_parity(get_scenario(scenario_id), reference, conductor, timeout=60.0)
    finally:
        await reference.engine.close()
        await conductor.engine.close()
    assert report.equal, report.summary()
    checksums = set(report.checksums.values())
    assert len(checksums) == 1, report.checksums
