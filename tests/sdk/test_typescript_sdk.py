"""The TypeScript SDK's own tests (`npm test`) against a real `dvt serve`."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from api_helpers import ApiServer

from dvt_api.sdkgen import TS_DIR, SdkToolError, ensure_node_modules


def test_npm_test_passes_against_the_real_service(sdk_env: dict[str, str], sdk_server: ApiServer,
        run_suite: Callable[[list[str], Path, dict[str, str]], str]) -> None:
    try:
        ensure_node_modules()  # npm ci from package-lock.json, unless already done
    except SdkToolError as exc:
        pytest.fail(str(exc))
    npm = shutil.which("npm")
    assert npm is not None, "npm is not on PATH"
    output = run_suite([npm, "test"], TS_DIR, sdk_env)
    # node's runner prints its totals; every test ran and none was skipped.
    passed = re.search(r"^# pass (\d+)$", output, re.M)
    assert passed is not None, output[-3000:]
    assert int(passed.group(1)) >= 10, output[-3000:]
    assert re.search(r"^# fail 0$", output, re.M), output[-3000:]
    assert re.search(r"^# skipped 0$", output, re.M), output[-3000:]
    # The requests reached the real service (its access log names the SDK's calls).
    sdk_server.wait_for_log("/v1/runs")
