"""An archiver killed (SIGKILL, a real process) at each stage loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from archive_helpers import drain_outbox, hot_counts, parquet_rows, read_all, seed_runs

from dvt_archive.archiver import STAGES, archive_runs
from dvt_statestore_pg.store import PostgresRunStateStore

CHILD = Path(__file__).with_name("archive_crash_child.py")


def _kill_at(stage: str, store_url: str, root: Path) -> None:
    """Start an archiver process, wait until it reports ``stage``, and SIGKILL it there."""
    proc = subprocess.Popen([sys.executable, str(CHILD), stage, store_url, str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line == f"at {stage}", f"the archiver ended before {stage}: {line!r}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("stage", STAGES)
async def test_an_archiver_killed_at_each_stage_loses_and_duplicates_nothing(
    stage: str, pg_store: PostgresRunStateStore, pg_store_url: str, pg_dsn: str,
    pg_schema: str, tmp_path: Path,
) -> None:
    runs = await seed_runs(pg_store, ["linear-chain", "diamond", "skip-step"], f"kill-{stage}")
    before = await read_all(pg_store, runs)
    await drain_outbox(pg_store)
    root = tmp_path / "cold"

    await asyncio.to_thread(_kill_at, stage, pg_store_url, root)

    # Whatever the point, every reader sees the same runs.
    assert await read_all(pg_store, runs) == before
    hot = hot_counts(pg_dsn, pg_schema, runs)
    # batch_runs=2: the first batch holds two of the three runs; it is committed or not at all.
    moved = sorted(k for k in runs if hot[k] == 0)
    assert all(hot[k] in (0, len(before[k].events)) for k in runs)
    assert len(moved) == (2 if stage == "committed" else 0)

    # The next pass cleans up what the killed one left and archives everything exactly once.
    report = await archive_runs(pg_store_url, str(root), older_than=timedelta(0),
                                lock_wait=30)
    assert report.cleaned == (0 if stage == "committed" else 1)
    assert await read_all(pg_store, runs) == before
    assert sum(hot_counts(pg_dsn, pg_schema, runs).values()) == 0
    ours = {key for key in runs}
    stored = [row for row in await asyncio.to_thread(parquet_rows, root)
              if (row[0], row[1]) in ours]
    assert sorted(stored) == sorted(
        (t, r, seq) for (t, r) in runs for seq in range(1, len(before[(t, r)].events) + 1))
    # No file outside what the committed batches list (no orphan, no half-written tmp file).
    leftovers = await asyncio.to_thread(
        lambda: sorted(p.name for p in root.rglob("*") if p.is_file() and ".tmp-" in p.name))
    assert leftovers == []
