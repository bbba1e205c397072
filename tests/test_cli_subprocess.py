"""The installed `dvt` command as a real process: exit codes, stdout/stderr and environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cli_helpers import CLI_ENV, PLANS

TIMEOUT_S = 120


def dvt(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in CLI_ENV}
    clean.update({"DVT_HOME": str(cwd / "home"), **env})
    return subprocess.run([sys.executable, "-m", "dvt_cli", *args], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL, check=False)


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "dvt"
    assert script.exists(), f"the dvt console script is missing next to {sys.executable}"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("dvt, version ")


def test_run_completed_and_failed_as_a_process(tmp_path: Path) -> None:
    ok = dvt("run", str(PLANS / "fan-out-fan-in.json"), "--json", cwd=tmp_path,
             DVT_ENGINE="reference")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["status"] == "COMPLETED"
    assert all(s["status"] == "SUCCESS" for s in doc["snapshot"]["steps"])
    plan = tmp_path / "fail.json"
    plan.write_text(json.dumps({
        "metadata": {"planId": "f", "planVersion": "1", "schemaVersion": "v1.2"},
        "steps": [{"stepId": "x", "kind": "fail", "params": {"code": "E1"}}]}))
    failed = dvt("run", str(plan), cwd=tmp_path, DVT_ENGINE="reference")
    assert failed.returncode == 1, failed.stderr
    assert "FAILED" in failed.stdout
    assert "Traceback" not in failed.stderr


def test_refused_plan_as_a_process(tmp_path: Path) -> None:
    done = dvt("run", str(PLANS / "unknown-kind.json"), cwd=tmp_path, DVT_ENGINE="reference")
    assert done.returncode == 2
    assert "error STEP_KIND_UNKNOWN:" in done.stderr
    assert "hint: Register a handler" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_host_handlers_are_imported_with_handlers_option(tmp_path: Path) -> None:
    (tmp_path / "my_steps.py").write_text(
        "from dvt_engine.steps import step_handler\n\n"
        "@step_handler('warehouse.load')\n"
        "async def load(ctx):\n"
        "    return {'table': ctx.params['table'], 'attempt': ctx.logical_attempt_id}\n"
    )
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "metadata": {"planId": "h", "planVersion": "1", "schemaVersion": "v1.2"},
        "steps": [{"stepId": "load", "kind": "warehouse.load", "params": {"table": "t1"}}]}))
    without = dvt("run", str(plan), "--json", cwd=tmp_path, DVT_ENGINE="reference")
    assert without.returncode == 2
    assert json.loads(without.stdout)["error"]["code"] == "STEP_KIND_UNKNOWN"
    done = dvt("run", str(plan), "--json", cwd=tmp_path, DVT_ENGINE="reference",
               DVT_HANDLERS="my_steps")
    assert done.returncode == 0, done.stderr
    step = json.loads(done.stdout)["snapshot"]["steps"][0]
    assert step["output"] == {"table": "t1", "attempt": 1}


def test_interrupt_says_what_happens_to_the_run(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in CLI_ENV}
    clean.update({"DVT_HOME": str(tmp_path / "home"), "DVT_ENGINE": "reference",
                  "PYTHONUNBUFFERED": "1"})
    process = subprocess.Popen([sys.executable, "-m", "dvt_cli", "run",
                                str(PLANS / "approval.json")], cwd=tmp_path, env=clean,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    seen = []
    # The gate waits for an approver forever: interrupt once the run reached it.
    for line in process.stdout:
        seen.append(line)
        if "StepAwaitingApproval" in line:
            process.send_signal(signal.SIGINT)
            break
    try:
        _rest, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
    assert any("StepAwaitingApproval" in line for line in seen)
    assert process.returncode == 130
    assert "stops with this command" in err
    assert "Traceback" not in err


def test_notices_never_reach_stdout(tmp_path: Path) -> None:
    # Falling back to the reference engine and using the memory store are both announced, on
    # stderr only, so `--json` output stays one parseable document. A shadow package stands in
    # for a machine without the temporal extra.
    shadow = tmp_path / "shadow" / "dvt_adapters_temporal"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the temporal extra is absent')\n")
    done = dvt("run", str(PLANS / "one-step.json"), "--json", cwd=tmp_path,
               PYTHONPATH=str(tmp_path / "shadow"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "COMPLETED"
    assert "in-memory store" in done.stderr
    assert "running on the in-process reference engine" in done.stderr
    assert json.loads(done.stdout)["snapshot"]["engineRunRef"]["provider"] == "reference"


def test_a_reader_that_closes_the_pipe_ends_dvt_quietly(tmp_path: Path) -> None:
    # `dvt run PLAN | head -1`: the lines after the first have nowhere to go.
    plan = tmp_path / "long.json"
    plan.write_text(json.dumps({
        "metadata": {"planId": "long", "planVersion": "1", "schemaVersion": "v1.2"},
        "steps": [{"stepId": f"s{i}", "kind": "noop",
                   **({"dependsOn": [f"s{i - 1}"]} if i else {})} for i in range(1500)]}))
    clean = {k: v for k, v in os.environ.items() if k not in CLI_ENV}
    clean.update({"DVT_HOME": str(tmp_path / "home"), "DVT_ENGINE": "reference"})
    proc = subprocess.Popen([sys.executable, "-m", "dvt_cli", "run", str(plan)], cwd=tmp_path,
                            env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=TIMEOUT_S) == 141, err
    assert first.strip()
    assert "INTERNAL_ERROR" not in err
    assert "Traceback" not in err
