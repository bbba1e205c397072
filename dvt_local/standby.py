"""A streaming standby of a local PostgreSQL server, promoted when the primary is gone.

Built with the pinned wheel's own tools, never the machine's: ``pg_basebackup -R`` copies the
primary and writes the standby's ``primary_conninfo``, ``pg_ctl promote`` ends its recovery and
``psql`` reads ``pg_stat_replication`` (so, like ``dvt_local.postgres``, no database driver).
Replication is synchronous by default: a commit the primary acknowledged is on the standby too,
so failing over loses nothing a client was told was written. With ``synchronous=False`` the
standby may miss the last commits before the primary died, which is what asynchronous
replication means; a store on it would then be missing events it acknowledged.

Clients reach whichever server is the primary through one libpq multi-host URL
(``failover_url``): ``target_session_attrs=read-write`` makes libpq skip a server that is down
or still in recovery, so after a promotion a reconnecting pool finds the new primary by itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from dvt_local import lifecycle
from dvt_local.postgres import PostgresServer, PostgresServerError

BASEBACKUP_TIMEOUT_S = 120.0
PROMOTE_TIMEOUT_S = 60.0
STREAMING_TIMEOUT_S = 60.0


def _run_as(server: PostgresServer, args: list[str], timeout: float) -> str:
    """Run one of the wheel's tools as the server's user; its stdout (exit 0 required)."""
    user = server.user
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False,
        user=user.pw_uid if user else None, group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
    )
    if done.returncode != 0:
        raise PostgresServerError(
            f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def psql(server: PostgresServer, query: str, timeout: float = 30.0) -> str:
    """One query through the wheel's ``psql`` (unaligned, tuples only); its output."""
    return _run_as(server, [str(server.bin_dir / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1",
                            "-p", str(server.port), "-U", "postgres", "-d", "postgres",
                            "-c", query], timeout).strip()


def replication_states(primary: PostgresServer) -> list[tuple[str, str]]:
    """The primary's walsenders as (state, sync_state) pairs, e.g. ("streaming", "sync")."""
    rows = psql(primary, "select state, sync_state from pg_stat_replication")
    return [tuple(line.split("|", 1)) for line in rows.splitlines() if "|" in line]  # type: ignore[misc]


def in_recovery(server: PostgresServer) -> bool:
    """Whether ``server`` is still a standby (``pg_is_in_recovery()``)."""
    return psql(server, "select pg_is_in_recovery()") == "t"


def _make_synchronous(primary: PostgresServer) -> None:
    # ALTER SYSTEM writes postgresql.auto.conf; the reload makes commits wait for the standby.
    psql(primary, "alter system set synchronous_standby_names = '*'")
    psql(primary, "select pg_reload_conf()")


def start_standby(primary: PostgresServer, *, synchronous: bool = True,
                  timeout: float = STREAMING_TIMEOUT_S) -> PostgresServer:
    """Copy ``primary`` with ``pg_basebackup``, start the copy as a streaming standby.

    Returns once the primary reports the standby streaming (and, when ``synchronous``, as its
    synchronous standby). The standby lives in a fresh temporary directory on a free port.
    """
    root = Path(tempfile.mkdtemp(prefix="dvt-pg-standby-"))
    root.chmod(0o755)
    standby = PostgresServer(bin_dir=primary.bin_dir, root=root, port=lifecycle.free_port(),
                             user=primary.user, settings=dict(primary.settings),
                             die_with_parent=primary.die_with_parent)
    try:
        standby.data_dir.mkdir(mode=0o700)
        if standby.user is not None:
            os.chown(root, standby.user.pw_uid, standby.user.pw_gid)
            os.chown(standby.data_dir, standby.user.pw_uid, standby.user.pw_gid)
        # -R writes standby.signal and primary_conninfo; -X stream copies the WAL it needs.
        _run_as(standby, [str(primary.bin_dir / "pg_basebackup"), "-h", "127.0.0.1",
                          "-p", str(primary.port), "-U", "postgres", "-D",
                          str(standby.data_dir), "-R", "-X", "stream", "-c", "fast",
                          "--no-sync"], BASEBACKUP_TIMEOUT_S)
        standby.start()
        if synchronous:
            _make_synchronous(primary)
        wanted = "sync" if synchronous else None
        deadline = time.monotonic() + timeout
        while True:
            states = replication_states(primary)
            if any(state == "streaming" and (wanted is None or sync == wanted)
                   for state, sync in states):
                return standby
            if time.monotonic() > deadline:
                raise PostgresServerError(
                    f"the standby on port {standby.port} is not streaming after {timeout:.0f}s "
                    f"(pg_stat_replication: {states}); log tail:\n{standby.log_tail()}")
            time.sleep(0.1)  # polling the primary's view; no notification exists for it
    except BaseException:
        standby.destroy()
        raise


def promote(standby: PostgresServer, timeout: float = PROMOTE_TIMEOUT_S) -> float:
    """End the standby's recovery (``pg_ctl promote --wait``); the seconds it took."""
    began = time.monotonic()
    _run_as(standby, [str(standby.bin_dir / "pg_ctl"), "promote", "-D", str(standby.data_dir),
                      "-w", "-t", str(int(timeout))], timeout + 10)
    return time.monotonic() - began


def crash(server: PostgresServer) -> None:
    """SIGKILL the postmaster and every backend (its process group): a server crash.

    The server's files stay, so ``server.start()`` brings it back on the same port and data
    (PostgreSQL runs crash recovery from its WAL).
    """
    process, server.process = server.process, None
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def failover_url(servers: list[PostgresServer], dbname: str = "postgres",
                 **options: str) -> str:
    """A libpq multi-host URL over ``servers`` that connects to the one accepting writes."""
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    query = "&".join(f"{k}={v}" for k, v in
                     {"target_session_attrs": "read-write", **options}.items())
    return f"postgresql://postgres@{hosts}/{dbname}?{query}"

