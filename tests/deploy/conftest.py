"""promtool for the deploy tests: the machine's, else Debian's `prometheus` package unpacked
into a cache directory (`apt-get download` needs no root; `dpkg-deb -x` installs nothing)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = "prometheus"


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dvt" / "promtool"


def _download(into: Path) -> None:
    """The package's .deb into ``into``; refreshes the package lists once when root."""
    done = subprocess.run(["apt-get", "download", PACKAGE], cwd=into, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0 and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        done = subprocess.run(["apt-get", "download", PACKAGE], cwd=into, capture_output=True,
                              text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"promtool: `apt-get download {PACKAGE}` failed: {done.stderr[-500:]}")


@pytest.fixture(scope="session")
def promtool() -> str:
    """The path of a promtool binary (installed from Debian's package on first use)."""
    found = shutil.which("promtool")
    if found:
        return found
    cache = _cache()
    binary = cache / "root" / "usr" / "bin" / "promtool"
    if not binary.exists():
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            pytest.fail("promtool is not installed and this machine has no apt-get/dpkg-deb")
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob("*.deb"):
            old.unlink()
        _download(cache)
        deb = next(cache.glob(f"{PACKAGE}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "root")], check=True)
    return str(binary)
