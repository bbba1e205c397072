"""Every `dvt` process that touched Temporal ends with its own exit status.

The Temporal SDK's native core keeps threads the SDK cannot stop; a callback from one of them
while the interpreter finalizes aborted the process (134) or crashed it (139) after it printed
its result, in about one run of five. These tests repeat the affected commands as real
processes against one dev server and check every status; a single crash fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import CLI_ENV, PLANS

from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.plugins import open_store
from dvt_engine.waiting import wait_for_snapshot

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
    clean = {k: v for k, v in os.environ.items() if k not in CLI_ENV}
    return {**clean, "DVT_HOME": str(tmp_path / "home"), **extra}


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


async def _wait(store_url: str, tenant: str, run_id: str, predicate: Any) -> RunSnapshot:
    store = await open_store(store_url)
    try:
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while await store.get_run(tenant, run_id) is None:
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"run {run_id} was not registered within {WAIT_S}s")
            # Re-check whenever the tenant's log moves, and at least once a second.
            async with contextlib.aclosing(store.follow(tenant, None)) as events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(anext(events), 1.0)
        return await wait_for_snapshot(store, tenant, run_id, predicate, timeout=WAIT_S)
    finally:
        await store.close()


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
        asyncio.run(_wait(store_url, tenant, run_id,
                          lambda s: s.step("signoff").substatus == "AWAITING_APPROVAL"))
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
