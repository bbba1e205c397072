"""What every local server shares: ports, pid records, liveness, health waits, logs and stop.

A server started for `dvt dev` outlives the command that started it, so what is known about it
lives in a small JSON record beside its data (pid, the process's start time, host, port, log).
The start time guards against pid reuse: a recorded pid whose process started at another time
is some other process and is never signalled. The recorded port survives the process, so a
server restarted after a crash comes back where clients and workers expect it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from dvt_engine.errors import EngineUnavailable

LOOPBACK = "127.0.0.1"
#: How long a stopped process gets after the last gentle signal before SIGKILL.
KILL_GRACE_S = 5.0


class LocalServerError(EngineUnavailable):
    """A local server could not be found, started or stopped."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could listen on ``port`` of ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections of a stopped server in TIME_WAIT do not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def process_start_time(pid: int) -> float | None:
    """When the process ``pid`` started (seconds since the epoch), or None when there is none."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def alive(pid: int, started_at: float | None = None) -> bool:
    """Whether ``pid`` runs (a zombie does not) and, when given, is the process started then."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            # Our own exited child: reap it so the pid is released.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
        if started_at is not None and abs(proc.create_time() - started_at) > 1.0:
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return True


def stop_process(
    pid: int,
    *,
    signals: Sequence[signal.Signals] = (signal.SIGTERM,),
    timeout_s: float = 30.0,
    group: bool = False,
    started_at: float | None = None,
) -> bool:
    """Stop ``pid`` (or its process group): each of ``signals`` in turn, then SIGKILL.

    Returns False when there was no such process. Each signal gets ``timeout_s`` to work.
    """
    if not alive(pid, started_at):
        return False
    for sig in (*signals, signal.SIGKILL):
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return True
        with contextlib.suppress(psutil.NoSuchProcess):
            try:
                # Reaps the process too when it is our child.
                psutil.Process(pid).wait(KILL_GRACE_S if sig == signal.SIGKILL else timeout_s)
            except psutil.TimeoutExpired:
                continue
        return True
    if alive(pid):
        raise LocalServerError(f"process {pid} did not stop")
    return True


def _die_with_parent() -> None:
    # Linux only: the server gets SIGTERM when the process that started it dies.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(
    cmd: Sequence[str],
    *,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: tuple[int, int] | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session with stdout and stderr appended to ``log_file``.

    ``die_with_parent`` is for throwaway servers (tests); servers that must outlive the
    starting command (``dvt dev``) leave it off. ``user`` is a (uid, gid) to run as.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if user is not None:
        extra = {"user": user[0], "group": user[1], "extra_groups": []}
    with log_file.open("ab") as log:
        return subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None, **extra,
        )


def log_tail(path: Path, chars: int = 3000) -> str:
    """The end of a server log, for error messages."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no server log)"


def wait_ready(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    *,
    what: str,
    log_file: Path,
    timeout_s: float,
    interval_s: float = 0.1,
) -> float:
    """Poll ``ready`` until it is true; return the seconds it took.

    Fails at once when the process exits, and after ``timeout_s`` otherwise (stopping the
    process), with the end of the log in the message.
    """
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if process.poll() is not None:
            raise LocalServerError(
                f"{what} exited with {process.returncode} while starting; log tail:\n"
                f"{log_tail(log_file)}",
                details={"log": str(log_file)},
            )
        if ready():
            return time.monotonic() - began
        # Waiting on the process doubles as the pause between probes.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=interval_s)
    stop_process(process.pid, timeout_s=10.0)
    raise LocalServerError(
        f"{what} did not become ready within {timeout_s:.0f}s; log tail:\n{log_tail(log_file)}",
        details={"log": str(log_file)},
    )


@dataclass(frozen=True)
class ServerRecord:
    """A background server as recorded beside its data."""

    name: str
    pid: int
    started_at: float
    host: str
    port: int
    log_file: str
    data_dir: str
    url: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def running(self) -> bool:
        """Whether the recorded process still runs."""
        return alive(self.pid, self.started_at)

    def describe(self) -> dict[str, Any]:
        """The record as JSON-safe data (for `dvt dev status --json`)."""
        return {"pid": self.pid, "host": self.host, "port": self.port, "address": self.address,
                "url": self.url, "log": self.log_file, "dataDir": self.data_dir, **self.extra}


def read_record(path: Path) -> ServerRecord | None:
    """The record at ``path`` whether or not its process still runs; None without one."""
    try:
        return ServerRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running_record(path: Path) -> ServerRecord | None:
    """The record at ``path`` when its process still runs."""
    record = read_record(path)
    return record if record is not None and record.running() else None


def write_record(path: Path, record: ServerRecord) -> None:
    """Record a started server (atomically: a reader never sees half a record)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)


def port_for_restart(path: Path, default: int | None = None, host: str = LOOPBACK) -> int:
    """The port to start on: the recorded one when it is free, else ``default`` or a free one."""
    record = read_record(path)
    if record is not None and port_is_free(record.port, host):
        return record.port
    if default is not None:
        return default
    return free_port(host)


@dataclass(frozen=True)
class UpResult:
    """What bringing a background server up did."""

    record: ServerRecord
    started: bool
    restarted: bool = False


def bring_up(path: Path, start: Callable[[int], ServerRecord], *,
             port: int | None = None, host: str = LOOPBACK) -> UpResult:
    """Find the server recorded at ``path``, or start it with ``start(port)`` and record it.

    Without an explicit ``port``, a server that ran before (its record is still there after a
    crash or a `dvt dev down`) comes back on its recorded port.
    """
    current = running_record(path)
    if current is not None:
        return UpResult(current, started=False)
    before = read_record(path)
    chosen = port if port is not None else port_for_restart(path, host=host)
    record = start(chosen)
    write_record(path, record)
    return UpResult(record, started=True,
                    restarted=before is not None and before.port == record.port)


def bring_down(path: Path, *, signals: Sequence[signal.Signals] = (signal.SIGTERM,),
               timeout_s: float = 30.0, group: bool = False) -> bool:
    """Stop the server recorded at ``path``; False when none ran. The record (port) stays."""
    record = running_record(path)
    if record is None:
        return False
    return stop_process(record.pid, signals=signals, timeout_s=timeout_s, group=group,
                        started_at=record.started_at)


def new_record(name: str, process: subprocess.Popen[bytes], *, host: str, port: int,
               log_file: Path, data_dir: Path, url: str,
               extra: dict[str, Any] | None = None) -> ServerRecord:
    """The record of a server just started as ``process``."""
    started_at = process_start_time(process.pid)
    if started_at is None:
        raise LocalServerError(f"{name} exited right after it started; log tail:\n"
                               f"{log_tail(log_file)}")
    return ServerRecord(name=name, pid=process.pid, started_at=started_at, host=host,
                        port=port, log_file=str(log_file), data_dir=str(data_dir), url=url,
                        extra=dict(extra or {}))
