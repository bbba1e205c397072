"""Record Temporal workflow histories of golden scenarios for the replay test.

Run: python tests/temporal/record_histories.py [SCENARIO_ID ...]
Starts a dev server from the pinned wheel, drives each scenario on the Temporal engine, and
writes golden_fixtures/temporal_histories/<id>.history.json (every run of the chain, so
continue-as-new is covered). Re-record only when a recorded behaviour is meant to change, and
gate that change with workflow.patched first (docs/temporal.md).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HISTORIES = ROOT / "golden_fixtures" / "temporal_histories"

# Scenarios that exercise every command the workflow issues: steps in parallel, engine retries,
# gates (approve, reject, timeout), pause/resume, cancel, awaitOperator, skip, failFast, and a
# continue-as-new after every 2 steps while recording, so most chains span several runs.
RECORDED = (
    "diamond",
    "flaky-third-attempt",
    "approval-approved",
    "approval-rejected",
    "approval-timeout",
    "pause-resume-gate",
    "cancel-mid-run",
    "await-operator-retry",
    "skip-step",
    "fail-fast-parallel",
    "linear-chain",
    # Plan v1.3 custom signals: a signal wait completed during a pause, completed with an
    # output a condition reads (and a late signal refused), skipped or failed by its timeout.
    "v13-signal-during-pause",
    "v13-signal-feeds-condition",
    "v13-signal-wait-timeout-skip",
    "v13-signal-wait-timeout-fail",
    # Plan v1.3 scheduling: limits and groups, priorities and class limits, joins, conditions
    # and forEach expansions (their StepExpanded markers cross continue-as-new).
    "v13-max-parallel-groups",
    "v13-priority-order",
    "v13-priority-first-steps",
    "v13-resource-class-limit",
    "v13-any-join-failing-loser",
    "v13-any-join-skip-losers",
    "v13-any-join-cancel-losers",
    "v13-quorum-combination",
    "v13-condition-skip-branch",
    "v13-foreach-condition",
    "v13-foreach-fan-in",
    "v13-foreach-empty",
)
CAN_AFTER_STEPS = 2


async def record(ids: tuple[str, ...]) -> None:
    """Drive each scenario and save its workflow history chain."""
    from contract_tests.scenarios import check_intent, execute_scenario, get_scenario
    from dvt_adapters_temporal.engine import TemporalEngine
    from dvt_adapters_temporal.replay import fetch_chain, write_chain
    from dvt_engine.models.run import TemporalRunRef
    from dvt_engine.stores.memory import MemoryRunStateStore
    from dvt_local.temporal import local_dev_env

    HISTORIES.mkdir(parents=True, exist_ok=True)
    async with local_dev_env() as env:
        for scenario_id in ids:
            store = MemoryRunStateStore()
            engine = TemporalEngine(
                store,
                address=env.client.service_client.config.target_host,
                task_queue=f"record-{uuid.uuid4().hex[:8]}",
                continue_as_new_after_steps=CAN_AFTER_STEPS,
            )
            try:
                scenario = get_scenario(scenario_id)
                outcome = await execute_scenario(scenario, engine, store)
                problems = check_intent(scenario, outcome)
                if problems:
                    raise SystemExit(f"{scenario_id}: {problems}")
                ref = outcome.run_ref
                assert isinstance(ref, TemporalRunRef)
                client = await engine.client()
                handle = client.get_workflow_handle(ref.workflow_id)
                await handle.result()
                chain = await fetch_chain(client, ref.workflow_id)
                write_chain(chain, HISTORIES / f"{scenario_id}.history.json")
                print(f"{scenario_id}: {len(chain['runs'])} run(s) recorded", flush=True)
            finally:
                await engine.close()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    asyncio.run(record(tuple(sys.argv[1:]) or RECORDED))
    sys.stdout.flush()
    os._exit(0)
