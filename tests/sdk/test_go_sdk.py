"""The Go SDK's own tests (`go test`) against a real `dvt serve`."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

from api_helpers import ApiServer

from dvt_api.sdkgen import GO_DIR


def test_go_test_passes_against_the_real_service(sdk_env: dict[str, str], sdk_server: ApiServer,
        run_suite: Callable[[list[str], Path, dict[str, str]], str]) -> None:
    go = shutil.which("go")
    assert go is not None, "go is not on PATH"
    # -mod=readonly: go.mod and go.sum as checked in must be complete.
    env = {**sdk_env, "GOFLAGS": "-mod=readonly"}
    output = run_suite([go, "test", "-count=1", "-v", "./..."], GO_DIR, env)
    passed = re.findall(r"^--- PASS: (\w+)", output, re.M)
    assert len(passed) >= 10, output[-3000:]
    assert "--- SKIP" not in output, output[-3000:]
    assert "--- FAIL" not in output, output[-3000:]
    assert "TestReadmeExampleRunsAsWritten" in passed
    sdk_server.wait_for_log("/v1/runs")
