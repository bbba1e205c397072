"""Recorded histories of the golden scenarios replay unchanged through the SDK's Replayer."""

from __future__ import annotations

from pathlib import Path

import pytest
from changed_workflow import ChangedWithoutPatch
from record_histories import RECORDED
from temporalio import workflow
from temporalio.worker import Replayer

from contract_tests.scenarios import scenario_ids
from dvt_adapters_temporal.replay import history_files, read_chain, replay_chain
from dvt_adapters_temporal.worker import workflow_runner

HISTORIES = Path(__file__).resolve().parents[2] / "golden_fixtures" / "temporal_histories"
FILES = list(history_files(HISTORIES))


def test_histories_are_recorded() -> None:
    # The replay test only protects what was recorded: every interpreter command is covered.
    names = {p.name.split(".")[0] for p in FILES}
    assert {"diamond", "approval-timeout", "pause-resume-gate", "cancel-mid-run",
            "await-operator-retry", "linear-chain", "v13-signal-during-pause",
            "v13-signal-feeds-condition", "v13-signal-wait-timeout-skip"} <= names
    chains = [read_chain(p) for p in FILES]
    assert any(len(c["runs"]) > 1 for c in chains), "no continue-as-new chain recorded"
    # Every recorded scenario has its history, and every plan v1.3 scenario that starts a
    # workflow is recorded: new v1.3 workflow behaviour cannot land unprotected.
    assert set(RECORDED) <= names
    starts_no_workflow = {"v13-foreach-too-many"}  # refused before anything runs
    v13 = {s for s in scenario_ids() if s.startswith("v13-")} - starts_no_workflow
    assert v13 <= set(RECORDED), sorted(v13 - set(RECORDED))


@pytest.mark.parametrize("path", FILES, ids=[p.name.split(".")[0] for p in FILES])
async def test_recorded_history_replays(path: Path) -> None:
    results = await replay_chain(read_chain(path))
    assert results
    assert all(r.replay_failure is None for r in results)


async def test_an_ungated_change_fails_replay() -> None:
    chain = read_chain(HISTORIES / "diamond.history.json")
    from temporalio.client import WorkflowHistory

    replayer = Replayer(workflows=[ChangedWithoutPatch], workflow_runner=workflow_runner())
    history = WorkflowHistory.from_json(chain["workflowId"], chain["runs"][0])
    with pytest.raises(workflow.NondeterminismError):
        await replayer.replay_workflow(history)
