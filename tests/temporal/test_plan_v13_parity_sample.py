"""Parity on a sample of random v1.3 plans: Temporal and the reference engine agree.

The plans come from the same strategy as the reference engine's property test
(tests/plan_v13_strategies.py), drawn deterministically so every CI run checks the same
sample; each mixes maxParallel, concurrency groups, any/quorum joins, conditions, skip rules
and bounded fan-outs in ways no golden scenario was written for.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from plan_v13_strategies import sample_plans
from temporalio.testing import WorkflowEnvironment

from contract_tests.parity import run_parity
from contract_tests.scenarios import EngineSide
from dvt_adapters_temporal.engine import TemporalEngine
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.stores.memory import MemoryRunStateStore

SAMPLE = sample_plans(8)


@pytest.mark.parametrize("document", SAMPLE, ids=[f"plan{i}" for i in range(len(SAMPLE))])
async def test_temporal_matches_the_reference_engine_on_random_v13_plans(
    temporal_env: WorkflowEnvironment, document: dict[str, Any],
) -> None:
    ref_store, tmp_store = MemoryRunStateStore(), MemoryRunStateStore()
    reference = EngineSide(ReferenceEngine(ref_store), ref_store, "reference")
    temporal = EngineSide(
        TemporalEngine(tmp_store, address=temporal_env.client.service_client.config.target_host,
                       task_queue=f"v13-sample-{uuid.uuid4().hex[:8]}"),
        tmp_store, "temporal")
    try:
        report = await run_parity(document, reference, temporal, timeout=120.0)
    finally:
        await reference.engine.close()
        await temporal.engine.close()
    assert report.equal, report.summary()
    assert len(set(report.checksums.values())) == 1, report.checksums
