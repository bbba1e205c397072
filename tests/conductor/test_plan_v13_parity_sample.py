"""Parity on a sample of random v1.3 plans: Conductor and the reference engine agree.

The same deterministic sample as tests/temporal/test_plan_v13_parity_sample.py (drawn from
tests/plan_v13_strategies.py): maxParallel, concurrency groups, any/quorum joins, conditions,
skip rules and bounded fan-outs in combinations no golden scenario was written for.
"""

from __future__ import annotations

from typing import Any

import pytest
from conductor_helpers import make_engine
from plan_v13_strategies import sample_plans

from contract_tests.parity import run_parity
from contract_tests.scenarios import EngineSide
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.stores.memory import MemoryRunStateStore

SAMPLE = sample_plans(8)


@pytest.mark.parametrize("document", SAMPLE, ids=[f"plan{i}" for i in range(len(SAMPLE))])
async def test_conductor_matches_the_reference_engine_on_random_v13_plans(
    conductor_url: str, document: dict[str, Any],
) -> None:
    ref_store, cond_store = MemoryRunStateStore(), MemoryRunStateStore()
    reference = EngineSide(ReferenceEngine(ref_store), ref_store, "reference")
    conductor = EngineSide(make_engine(conductor_url, cond_store), cond_store, "conductor")
    try:
        report = await run_parity(document, reference, conductor, timeout=120.0)
    finally:
        await reference.engine.close()
        await conductor.engine.close()
    assert report.equal, report.summary()
    assert len(set(report.checksums.values())) == 1, report.checksums
