"""The README's host example is a complete program: one import, run as written, no server."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120


def _blocks() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


def test_readme_host_example_runs_as_written(tmp_path: Path) -> None:
    blocks = _blocks()
    assert blocks, "the README has no python example"
    example = blocks[0]
    (tmp_path / "example.py").write_text(example, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVT_")}
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "COMPLETED"


def test_readme_examples_import_only_from_dvt_engine() -> None:
    # The HTTP client's example (tests/api/test_client_readme.py runs it) imports dvt_client.
    for block in _blocks():
        client = "from dvt_client import" in block
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom):
                allowed = "dvt_client" if client else "dvt_engine"
                assert node.module == allowed, f"README imports from {node.module}"
            elif isinstance(node, ast.Import):
                assert [a.name for a in node.names] == ["os" if client else "asyncio"]


def test_readme_example_uses_the_client_as_a_context_manager() -> None:
    tree = ast.parse(_blocks()[0])
    withs = [n for n in ast.walk(tree) if isinstance(n, ast.AsyncWith)]
    assert withs, "the client must be closed by `async with`"
    switch = _blocks()[1]
    assert "PostgresStoreSettings(" in switch
    assert "TemporalSettings(" in switch
