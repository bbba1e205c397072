"""A real `dvt serve` for the SDK suites, and running their toolchains loudly."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from api_helpers import ApiServer, start_server, stop_server, tenant

from dvt_statestore_pg.testing import schema_store_url

#: The engine's signal limit per run: real 429 answers for the suites' rate-limit tests, and
#: more than any other test sends to one run. Even: pause/resume pairs use it up.
SIGNALS_PER_MINUTE = 6


@pytest.fixture(scope="module")
def sdk_server(dvt_postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory,
               request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    """`dvt serve --engine reference` on PostgreSQL, on a free port of 127.0.0.1."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    tmp = tmp_path_factory.mktemp("sdk")
    with schema_store_url(dvt_postgres_dsn, prefix=f"dvt_{name}") as url:
        server = start_server(url, tmp / "server.log", tmp / "home", env={
            "DVT_REFERENCE_SIGNAL_RATE_LIMIT_PER_MINUTE": str(SIGNALS_PER_MINUTE)})
        try:
            yield server
        finally:
            if server.process.poll() is None:
                assert stop_server(server) == 0


@pytest.fixture(scope="module")
def sdk_env(sdk_server: ApiServer) -> dict[str, str]:
    """The environment an SDK test suite runs in: the service's URL and a steering key."""
    key = sdk_server.key(tenant(), "runner", "reader", "operator", "approver")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVT_")}
    env.update(DVT_API_URL=sdk_server.base_url, DVT_API_KEY=key,
               DVT_SIGNALS_PER_MINUTE=str(SIGNALS_PER_MINUTE))
    return env


def _run_suite(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600, check=False)
    except FileNotFoundError as exc:
        pytest.fail(f"{args[0]} is not installed: {exc}")
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` in {cwd} exited {done.returncode}:\n{output[-12000:]}")
    return output


@pytest.fixture
def run_suite() -> Callable[[list[str], Path, dict[str, str]], str]:
    """Run an SDK's own test command; fail (never skip) with its output when it fails."""
    return _run_suite
