"""Every `dvt` process that touched Temporal ends with its own exit status.

The Temporal SDK's native core keeps threads the SDK cannot stop; a callback from one of them
while the interpreter finalizes aborted the process (134) or crashed it (139) after it printed
its result, in about one run of five. These tests repeat the affected commands as real
processes against one dev server and check every status; a single crash fails them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cli_helpers import PLANS, process_env, wait_for_run

TIMEOUT_S = 180
WAIT_S = 90.0
REPEATS = 20
SIGNALS = 40
CRASH_MARKERS = ("Fatal Python error", "Segmentation fault", "Traceback")


@pytest.fixture
def temporal_address(dvt_temporal_address: str) -> str:
    """The session's Temporal dev server (the dvt pytest plugin's, from the pinned wheel)."""
    return dvt_temporal_address


@pytest.fixture
def store_url(dvt_postgres_store_url: str) -> str:
    """A fresh schema on the session's real PostgreSQL server."""
    return dvt_postgres_store_url


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return process_env({"DVT_HOME": str(tmp_path / "home"), **extra})


def dvt(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m dvt_cli ARGS` to its end: the same exit path as the console script."""
    return subprocess.run([sys.executable, "-m", "dvt_cli", *args], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL, check=False)


def _clean(done: subprocess.CompletedProcess[str], expected: int, attempt: int) -> None:
    where = f"call {attempt}: exit {done.returncode}\n{done.stderr[-2000:]}"
    assert done.returncode == expected, where
    for marker in CRASH_MARKERS:
        assert marker not in done.stderr, where


def test_run_and_parity_on_temporal_exit_with_their_status(
    tmp_path: Path, temporal_address: str
) -> None:
    env = _env(tmp_path, DVT_TEMPORAL_ADDRESS=temporal_address, DVT_STORE_URL="memory://")
    plan = str(PLANS / "one-step.json")
    for attempt in range(REPEATS):
        if attempt % 2:
            done = dvt(["parity", plan, "--engines", "reference,temporal", "--json"], env)
            _clean(done, 0, attempt)
            assert json.loads(done.stdout)["equal"] is True
        else:
            done = dvt(["run", plan, "--engine", "temporal", "--json"], env)
            _clean(done, 0, attempt)
            assert json.loads(done.stdout)["status"] == "COMPLETED"


def test_signals_to_a_running_temporal_run_exit_with_their_status(
    tmp_path: Path, temporal_address: str, store_url: str
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    env = _env(tmp_path, DVT_TEMPORAL_ADDRESS=temporal_address, DVT_STORE_URL=store_url,
               DVT_TENANT=tenant)
    run_id = f"gate-{uuid.uuid4().hex[:8]}"
    runner = subprocess.Popen(
        [sys.executable, "-m", "dvt_cli", "run", str(PLANS / "approval.json"), "--engine",
         "temporal", "--run-id", run_id, "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        asyncio.run(wait_for_run(store_url, tenant, run_id,
                                 lambda s: s.step("signoff").substatus == "AWAITING_APPROVAL",
                                 WAIT_S))
        for attempt in range(SIGNALS):
            action = "resume" if attempt % 2 else "pause"
            done = dvt(["signal", run_id, action], env)
            _clean(done, 0, attempt)
            assert " accepted" in done.stdout, done.stdout
        approved = dvt(["signal", run_id, "approve", "signoff"], env)
        _clean(approved, 0, SIGNALS)
    finally:
        try:
            out, err = runner.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            runner.kill()
            out, err = runner.communicate()
    assert runner.returncode == 0, err[-3000:]
    assert json.loads(out)["status"] == "COMPLETED"
