"""Running the `dvt` entry point in process (like CliRunner, through dvt's own main wrapper)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.plugins import open_store
from dvt_engine.waiting import wait_for_snapshot

REPO = Path(__file__).resolve().parent.parent
PLANS = REPO / "golden_fixtures" / "plans"
# Every variable the CLI reads: a test starts from none of them set.
CLI_ENV = ("DVT_ENGINE", "DVT_STORE_URL", "DVT_TENANT", "DVT_PROJECT", "DVT_ENVIRONMENT",
           "DVT_ACTOR", "DVT_ROLES", "DVT_TEMPORAL_ADDRESS", "DVT_TEMPORAL_NAMESPACE",
           "DVT_TEMPORAL_TASK_QUEUE", "DVT_CONDUCTOR_URL", "DVT_DEBUG", "DVT_HOME",
           "DVT_ARTIFACTS_URL", "DVT_ARTIFACTS_ENDPOINT_URL", "DVT_API_URL", "DVT_API_KEY")


@dataclass(frozen=True)
class Result:
    """What one invocation printed and returned."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout as one JSON document."""
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        """stdout as JSON Lines."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@contextmanager
def _env(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in (*CLI_ENV, *values)}
    try:
        for key in CLI_ENV:
            os.environ.pop(key, None)
        os.environ.update(values)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def invoke(capsys: pytest.CaptureFixture[str], args: list[str],
           env: Mapping[str, str] | None = None) -> Result:
    """Run ``dvt ARGS`` through dvt_cli.main.main and capture its output and exit code."""
    from dvt_cli.main import main

    capsys.readouterr()
    with _env(dict(env or {})):
        try:
            main(args)
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def process_env(values: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any CLI variable, plus ``values``: for a subprocess."""
    clean = {k: v for k, v in os.environ.items() if k not in CLI_ENV}
    return {**clean, **values}


async def wait_for_run(store_url: str, tenant: str, run_id: str,
                       predicate: Callable[[RunSnapshot], bool], timeout: float) -> RunSnapshot:
    """Wait on the store (condition-based, bounded) until the run's snapshot satisfies it."""
    store = await open_store(store_url)
    try:
        # The starting process may still be importing: wait for the run to be registered,
        # re-checking whenever the tenant's log moves and at least once a second.
        deadline = asyncio.get_running_loop().time() + timeout
        while await store.get_run(tenant, run_id) is None:
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"run {run_id} was not registered within {timeout}s")
            async with contextlib.aclosing(store.follow(tenant, None)) as events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(anext(events), 1.0)
        return await wait_for_snapshot(store, tenant, run_id, predicate, timeout=timeout)
    finally:
        await store.close()
