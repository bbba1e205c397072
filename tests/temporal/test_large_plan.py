"""A plan of a few thousand steps on Temporal: bounded histories, the reference engine's result.

Not timed (the machine is shared): what is asserted is that every workflow run's history stays
under the continue-as-new budget and that what one run carries to the next (the packed plan,
the cursor) does not grow with the run's progress, and that the run ends with the same snapshot
checksum as on the reference engine. Its histories then replay through the SDK's Replayer,
where no interpreter is handed over: the rebuilt one must decide the same.
"""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf import json_format
from temporal_helpers import TENANT, new_context, plan_doc, put_plan, wait_terminal
from temporalio.api.history.v1 import History
from temporalio.testing import WorkflowEnvironment

from dvt_adapters_temporal import handoff
from dvt_adapters_temporal.engine import TemporalEngine
from dvt_adapters_temporal.replay import fetch_chain, replay_chain
from dvt_engine.checksum import snapshot_checksum
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.models.run import RunStatus, TemporalRunRef
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.waiting import wait_for_terminal

STEPS = 2000
BUDGET = 1_000_000


def chain_like(n: int) -> list[dict[str, Any]]:
    """n noop steps, each depending on the (up to) 3 before it."""
    steps: list[dict[str, Any]] = []
    for i in range(n):
        step: dict[str, Any] = {"stepId": f"s{i:04d}", "kind": "noop"}
        if i:
            step["dependsOn"] = [f"s{j:04d}" for j in range(max(0, i - 3), i)]
        steps.append(step)
    return steps


async def reference_checksum(doc: dict[str, Any]) -> str:
    """The snapshot checksum of the same plan run to its end on the reference engine."""
    store = MemoryRunStateStore()
    engine = ReferenceEngine(store)
    try:
        ctx = new_context()
        await engine.start_run(await put_plan(store, doc), ctx)
        snap = await wait_for_terminal(store, TENANT, ctx.run_id, timeout=120)
        assert snap.status == RunStatus.COMPLETED
        return snapshot_checksum(snap)
    finally:
        await engine.close()


async def test_a_two_thousand_step_plan_completes_with_bounded_histories(
    temporal_env: WorkflowEnvironment,
) -> None:
    doc = plan_doc(chain_like(STEPS), planId="large-chain-like")
    engine = TemporalEngine(MemoryRunStateStore(),
                            address=temporal_env.client.service_client.config.target_host,
                            task_queue=f"t-{uuid.uuid4().hex[:8]}",
                            continue_as_new_history_bytes=BUDGET)
    taken_before = handoff.STATS["taken"]
    try:
        ctx = new_context()
        run_ref = await engine.start_run(await put_plan(engine.store, doc), ctx)
        assert isinstance(run_ref, TemporalRunRef)
        snap = await wait_terminal(engine.store, ctx.run_id, within_s=900)
        assert snap.status == RunStatus.COMPLETED
        assert sum(str(s.status) == "SUCCESS" for s in snap.steps) == STEPS
        assert snapshot_checksum(snap) == await reference_checksum(doc)

        chain = await fetch_chain(await engine.client(), run_ref.workflow_id)
        histories = [json_format.ParseDict(run, History()) for run in chain["runs"]]
        assert len(histories) >= STEPS // 50  # 50 steps per workflow run at most
        assert max(h.ByteSize() for h in histories) < BUDGET
        # What a run begins with (input and cursor) and what it hands on does not grow with
        # the steps behind it: the first and the last runs carry about the same.
        inputs = [h.events[0].ByteSize() for h in histories]
        carried = [h.events[-1].ByteSize() for h in histories[:-1]]
        assert max(inputs) < 4_000, inputs
        assert max(carried) < 4_000, carried
        # The plan's copy in every run is packed: a tenth of its JSON.
        prepared = [next(e for e in h.events if e.HasField("marker_recorded_event_attributes"))
                    for h in histories]
        assert max(e.ByteSize() for e in prepared) < 40_000
        # The runs of the chain ran on this worker: most took over their predecessor's
        # interpreter instead of rebuilding it.
        assert handoff.STATS["taken"] - taken_before > 0

        results = await replay_chain(chain)
        assert len(results) == len(histories)
        assert all(r.replay_failure is None for r in results)
    finally:
        await engine.close()
