"""A plan of 300 steps on a real Conductor server ends as it does on the reference engine.

Each step depends on the 3 before it, so nearly every step has a gate that a reconcile opens,
and the coordinator follows one interpreter along a long log. Not timed: how long it takes is
measured by ``benchmarks/bench_conductor.py --scale`` (1,000 steps and more, with the growth
per step); the timeout only stops a hung run. 300 steps keep CI's share small (the server
spends about 80 ms of CPU a step) while still far outnumbering the interpreter rebuilds the
test allows.
"""

from __future__ import annotations

from typing import Any

from conductor_helpers import make_engine

from contract_tests.parity import run_parity
from contract_tests.scenarios import EngineSide
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.stores.memory import MemoryRunStateStore

STEPS = 300

#: Hang guard per engine: far above what the run takes on a loaded 2-core machine.
HANG_GUARD_S = 3600.0


def window_plan(n: int, width: int = 3) -> dict[str, Any]:
    """``n`` noop steps, each depending on the ``width`` steps before it."""
    steps = [{"stepId": f"s{i:04d}", "kind": "noop",
              **({"dependsOn": [f"s{j:04d}" for j in range(max(0, i - width), i)]} if i else {})}
             for i in range(n)]
    return {"metadata": {"planId": f"large-{n}", "planVersion": "1.0.0",
                         "schemaVersion": "v1.2"}, "steps": steps}


async def test_a_long_plan_matches_the_reference_engine(conductor_url: str) -> None:
    """Same checksum and an equivalent event log as the reference engine, every step once."""
    ref_store, cond_store = MemoryRunStateStore(), MemoryRunStateStore()
    reference = EngineSide(ReferenceEngine(ref_store), ref_store, "reference")
    engine = make_engine(conductor_url, cond_store)
    conductor = EngineSide(engine, cond_store, "conductor")
    try:
        report = await run_parity(window_plan(STEPS), reference, conductor,
                                  timeout=HANG_GUARD_S)
        coordinator = await engine.coordinator()
        stats = coordinator.interpreters.stats
    finally:
        await reference.engine.close()
        await conductor.engine.close()
    assert report.equal, report.summary()
    assert len(set(report.checksums.values())) == 1, report.checksums
    # The coordinator followed the run's interpreter along the log: a handful of rebuilds
    # (the first use, a reconcile racing a worker's question), not one per step.
    assert stats.refreshes + stats.hits > STEPS, stats
    assert stats.rebuilds < STEPS // 10, stats
