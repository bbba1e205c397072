"""A purge or retention pass killed (SIGKILL, a real process) before or after its commit:
killed before, nothing changed; killed after, the next pass deletes the objects it left."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from archive_helpers import drain_outbox
from erasure_helpers import local_files, seed_tenant, tenant_rows

from dvt_archive.archiver import archive_runs
from dvt_archive.purge import STAGES, purge_tenant
from dvt_archive.retention import apply_retention
from dvt_engine.audit_keys import generate_key, load_keyring, load_signer
from dvt_statestore_pg.audit import seal, verify
from dvt_statestore_pg.erasure import set_policy
from dvt_statestore_pg.store import PostgresRunStateStore

pytestmark = pytest.mark.timeout(300)
CHILD = Path(__file__).with_name("erasure_crash_child.py")
GONE, KEPT = "crash-gone", "crash-kept"


def _kill_at(kind: str, stage: str, url: str, root: Path, key: Path) -> None:
    """Start the process, wait until it reports ``stage``, and SIGKILL it there."""
    proc = subprocess.Popen([sys.executable, str(CHILD), kind, stage, url, str(root), str(key),
                             GONE], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line == f"at {stage}", f"the {kind} ended before {stage}: {line!r}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("kind", ["purge", "retention"])
@pytest.mark.parametrize("stage", STAGES)
async def test_killed_before_its_commit_nothing_changed_after_it_the_next_pass_finishes(
    kind: str, stage: str, store: PostgresRunStateStore, tmp_path: Path,
) -> None:
    key, ring = tmp_path / "k1.pem", tmp_path / "ring.json"
    generate_key("k1", key, ring)
    signer = load_signer(key, "k1")
    root = tmp_path / "cold"
    await set_policy(store.url, GONE, cold_years=1)
    await seed_tenant(store, GONE, ["one-step", "diamond"], "k")
    await seed_tenant(store, KEPT, ["one-step"], "k")
    await seal(store, signer)
    await drain_outbox(store)
    await archive_runs(store.url, str(root), older_than=timedelta(0))
    rows, files = tenant_rows(store), local_files(root)
    assert [f for f in files if f.startswith(f"tenant={GONE}/")]

    await asyncio.to_thread(_kill_at, kind, stage, store.url, root, key)

    if stage == "removed":  # the transaction never committed: everything as it was
        assert tenant_rows(store) == rows
        assert local_files(root) == files
    else:  # committed: the rows are gone, the objects not yet
        assert tenant_rows(store)[GONE]["dvt_audit_tombstones"] == 1
        assert "dvt_runs" not in tenant_rows(store)[GONE]
        assert local_files(root) == files
    if kind == "purge":
        again = await purge_tenant(store.url, GONE, signer, actor="alice", roles=("admin",))
    else:
        again = await apply_retention(store.url, str(root), signer=signer,
                                      now=datetime.now(UTC) + timedelta(days=2 * 366))
    assert again.finished_cleanups == (1 if stage == "committed" else 0)
    assert not [f for f in local_files(root) if GONE in f]
    assert [f for f in local_files(root) if f.startswith(f"tenant={KEPT}/")] == [
        f for f in files if f.startswith(f"tenant={KEPT}/")]
    assert tenant_rows(store)[KEPT] == rows[KEPT]
    checked = await verify(store, load_keyring(ring))
    assert checked.ok, [f.to_dict() for f in checked.findings]
