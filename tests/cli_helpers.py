"""Running the `dvt` entry point in process (like CliRunner, through dvt's own main wrapper)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PLANS = REPO / "golden_fixtures" / "plans"
# Every variable the CLI reads: a test starts from none of them set.
CLI_ENV = ("DVT_ENGINE", "DVT_STORE_URL", "DVT_TENANT", "DVT_PROJECT", "DVT_ENVIRONMENT",
           "DVT_ACTOR", "DVT_ROLES", "DVT_TEMPORAL_ADDRESS", "DVT_TEMPORAL_NAMESPACE",
           "DVT_TEMPORAL_TASK_QUEUE", "DVT_CONDUCTOR_URL", "DVT_DEBUG", "DVT_HOME")


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
