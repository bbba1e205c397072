"""Replay recorded workflow histories through the SDK's Replayer to catch non-determinism."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer, WorkflowReplayResult

from dvt_adapters_temporal.converter import DATA_CONVERTER
from dvt_adapters_temporal.worker import workflow_runner
from dvt_adapters_temporal.workflow import DvtRunWorkflow

HISTORY_SUFFIX = ".history.json"


def replayer() -> Replayer:
    """A Replayer with dvt's workflow and the same sandbox settings as the workers."""
    return Replayer(workflows=[DvtRunWorkflow], workflow_runner=workflow_runner(),
                    data_converter=DATA_CONVERTER)


async def fetch_chain(client: Client, workflow_id: str) -> dict[str, Any]:
    """Every run of a workflow chain (continue-as-new included) as one JSON document."""
    runs: list[dict[str, Any]] = []
    run_id: str | None = (await client.get_workflow_handle(workflow_id).describe()).run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        runs.insert(0, json.loads(history.to_json()))
        started = history.events[0].workflow_execution_started_event_attributes
        # Walk back through the runs this one continued from.
        run_id = started.continued_execution_run_id or None
    return {"workflowId": workflow_id, "runs": runs}


def write_chain(data: dict[str, Any], path: Path) -> None:
    """Write a recorded chain to a file (stable formatting, for review in diffs)."""
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_chain(path: Path) -> dict[str, Any]:
    """Read a recorded chain."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def replay_chain(data: dict[str, Any]) -> list[WorkflowReplayResult]:
    """Replay every run of a recorded chain; raises on the first non-deterministic one."""
    results = []
    rep = replayer()
    for run in data["runs"]:
        history = WorkflowHistory.from_json(data["workflowId"], run)
        results.append(await rep.replay_workflow(history))
    return results


def history_files(directory: Path) -> Iterable[Path]:
    """Recorded histories in a directory, sorted by name."""
    return sorted(directory.glob(f"*{HISTORY_SUFFIX}"))
