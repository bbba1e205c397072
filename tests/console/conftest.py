"""A real `dvt serve` and one headless Chromium per test module, driven by Playwright.

Chromium is Debian's package (Playwright's own browser download is not used): the machine's
`/usr/bin/chromium`, else installed with apt-get when root, else `apt-get download` of
chromium and chromium-common unpacked with `dpkg-deb -x` into a cache directory. When none of
that works the fixture fails: a browser test that cannot run is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import ApiServer, start_server, stop_server

from dvt_statestore_pg.testing import schema_store_url

PACKAGES = ("chromium", "chromium-common")
SYSTEM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dvt" / "chromium"


def _apt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], cwd=cwd, capture_output=True, text=True,
                          check=False, env=env, timeout=900)


def _install_as_root() -> None:
    done = _apt("install", "-y", "-q", "--no-install-recommends", "chromium")
    if done.returncode != 0:
        _apt("update", "-q")
        done = _apt("install", "-y", "-q", "--no-install-recommends", "chromium")
    if done.returncode != 0:
        pytest.fail(f"chromium: `apt-get install chromium` failed: {done.stderr[-800:]}")


def _unpack_into_cache() -> Path:
    cache = _cache()
    binary = cache / "root" / "usr" / "lib" / "chromium" / "chromium"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("*.deb"):
        old.unlink()
    done = _apt("download", *PACKAGES, cwd=cache)
    if done.returncode != 0:
        pytest.fail(f"chromium: `apt-get download {' '.join(PACKAGES)}` failed: "
                    f"{done.stderr[-800:]}")
    for deb in cache.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "root")], check=True)
    return binary


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The path of a Chromium binary that starts (installed from Debian's package if needed)."""
    if not SYSTEM.exists():
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            pytest.fail("chromium is not installed and this machine has no apt-get/dpkg-deb")
        if os.geteuid() == 0:
            _install_as_root()
    binary = SYSTEM if SYSTEM.exists() else _unpack_into_cache()
    probe = subprocess.run([str(binary), "--headless", "--no-sandbox", "--version"],
                           capture_output=True, text=True, check=False, timeout=60)
    if probe.returncode != 0:
        pytest.fail(f"chromium at {binary} does not start (missing libraries? install the "
                    f"`chromium` package): {probe.stderr[-800:]}")
    return str(binary)


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    """One headless Chromium for the module (each test opens its own context)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium_path, args=LAUNCH_ARGS,
                                     headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where the screenshots go; printed so a CI job can collect them."""
    where = Path(os.environ.get("DVT_TEST_ARTIFACTS")
                 or tempfile.mkdtemp(prefix="dvt-console-artifacts-"))
    where.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {where}")
    return where


@pytest.fixture(scope="module")
def console_server(dvt_postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[ApiServer]:
    """`dvt serve --engine reference` on a fresh schema, stopped afterwards."""
    tmp = tmp_path_factory.mktemp("console")
    with schema_store_url(dvt_postgres_dsn, prefix="dvt_console") as url:
        server = start_server(url, tmp / "server.log", tmp / "home")
        try:
            yield server
        finally:
            if server.process.poll() is None:
                assert stop_server(server) == 0
