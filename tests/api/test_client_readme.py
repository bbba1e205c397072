"""The README's client example runs as written against a real `dvt serve`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from api_helpers import REPO, ApiServer, tenant


def _client_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
              if "from dvt_client import" in b]
    assert len(blocks) == 1, "the README has one client example"
    return blocks[0]


def test_readme_client_example_runs_as_written(api_server: ApiServer, tmp_path: Path) -> None:
    key = api_server.key(tenant(), "runner", "reader", "operator", "approver")
    (tmp_path / "example.py").write_text(_client_example(), encoding="utf-8")
    env = {k: v for k, v in api_server.env.items() if not k.startswith("DVT_")}
    env.update(DVT_API_URL=api_server.base_url, DVT_API_KEY=key)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "COMPLETED"
    events = [line.split() for line in lines[:-1]]
    assert [int(e[0]) for e in events] == list(range(1, len(events) + 1))
    types = [e[1] for e in events]
    for expected in ("StepAwaitingApproval", "RunPaused", "RunResumed", "RunCompleted"):
        assert expected in types, types
    assert types.index("StepAwaitingApproval") < types.index("RunPaused") < \
        types.index("RunResumed") < types.index("RunCompleted")
    assert types.count("RunPaused") == 1
