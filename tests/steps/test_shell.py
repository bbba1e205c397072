"""The shell kind end to end on the reference engine, with real subprocesses."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from secret_helpers import assert_no_secrets

from dvt_engine.errors import StepParamsInvalid
from dvt_engine.models.run import RunStatus
from dvt_steps.settings import ShellStepSettings
from dvt_steps.shell import ShellStepHandler

ANY = ShellStepSettings(commands=("*",), stop_grace_s=2.0)
SECRET = "s3cr3t-shell-value-4242"


def shell(**settings: Any) -> dict[str, ShellStepHandler]:
    """A registry entry: the shell kind with the given host settings (any command by default)."""
    return {"shell": ShellStepHandler(ANY.model_copy(update=settings) if settings else ANY)}


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of a process group (zombies are dead, only not yet reaped by init)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


async def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    """The file's text once a command has written it (polled until a deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")
        if text.strip():
            return text.strip()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} was never written")


async def test_a_command_runs_and_its_output_is_stored_as_artifacts(step_client: Any) -> None:
    async with step_client(shell()) as c:
        ran = await c.run([{"stepId": "hi", "kind": "shell",
                            "params": {"argv": ["sh", "-c", "echo hello; echo oops >&2"]}}])
    assert ran.snapshot.status == RunStatus.COMPLETED
    out = ran.output("hi")
    assert out["exitCode"] == 0
    assert await ran.artifact(out["stdout"]["uri"]) == b"hello\n"
    assert await ran.artifact(out["stderr"]["uri"]) == b"oops\n"
    assert out["stdout"] == {"uri": out["stdout"]["uri"], "sizeBytes": 6, "truncated": False}
    kinds = [a.kind for a in ran.snapshot.artifacts]
    assert kinds == ["shell.stdout", "shell.stderr"]


async def test_shell_metacharacters_in_argv_stay_literal(step_client: Any, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    argv = ["echo", f"$(touch {pwned})", ";", "touch", str(pwned), "|", "`id`", "&&", "*"]
    async with step_client(shell()) as c:
        ran = await c.run([{"stepId": "lit", "kind": "shell", "params": {"argv": argv}}])
    assert ran.snapshot.status == RunStatus.COMPLETED
    stdout = await ran.artifact(ran.output("lit")["stdout"]["uri"])
    assert stdout == (" ".join(argv[1:]) + "\n").encode()
    assert not pwned.exists()


async def test_the_environment_is_an_allowlist(step_client: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVT_TEST_HIDDEN", "hidden-value")
    monkeypatch.setenv("DVT_TEST_WIDENED", "widened-value")
    step = {"stepId": "env", "kind": "shell", "params": {"argv": ["env"], "env": {"GIVEN": "1"}}}
    async with step_client(shell()) as c:
        narrow = await c.run([step])
    async with step_client(shell(env_allow=("DVT_TEST_WIDENED",))) as c:
        wide = await c.run([step])
    names = {line.split("=", 1)[0] for line in
             (await narrow.artifact(narrow.output("env")["stdout"]["uri"])).decode().splitlines()}
    assert names <= {"PATH", "HOME", "LANG", "GIVEN"}
    assert "GIVEN" in names
    assert "PATH" in names
    widened = (await wide.artifact(wide.output("env")["stdout"]["uri"])).decode()
    assert "DVT_TEST_WIDENED=widened-value" in widened
    assert "DVT_TEST_HIDDEN" not in widened


async def test_a_secret_in_env_never_reaches_events_outputs_or_artifacts(step_client: Any) -> None:
    params = {"argv": ["sh", "-c", 'echo "token=$TOKEN"; echo "bad $TOKEN" >&2'],
              "env": {"TOKEN": {"secretRef": "vault:token"}}}
    failing = {"argv": ["sh", "-c", 'echo "denied for $TOKEN" >&2; exit 3'],
               "env": {"TOKEN": {"secretRef": "vault:token"}}}
    async with step_client(shell(), secrets={"vault:token": SECRET}) as c:
        ran = await c.run([{"stepId": "ok", "kind": "shell", "params": params},
                           {"stepId": "bad", "kind": "shell", "params": failing}])
    stdout = await ran.artifact(ran.output("ok")["stdout"]["uri"])
    stderr = await ran.artifact(ran.output("ok")["stderr"]["uri"])
    assert stdout == b"token=***\n"
    assert stderr == b"bad ***\n"
    error = ran.error("bad")
    assert error["code"] == "SHELL_EXIT_NONZERO"
    assert "denied for ***" in error["message"]
    assert SECRET not in ran.text()
    blobs = [b.decode() for b in c.artifacts.objects.values()]
    assert_no_secrets(ran.text(), *blobs, known=[SECRET])


async def test_a_nonzero_exit_fails_with_its_status_and_stderr_tail(step_client: Any) -> None:
    async with step_client(shell()) as c:
        argv = ["sh", "-c", "echo first >&2; echo last >&2; exit 7"]
        ran = await c.run([{"stepId": "x", "kind": "shell", "params": {"argv": argv}}])
    assert ran.snapshot.status == RunStatus.FAILED
    error = ran.error("x")
    assert error["code"] == "SHELL_EXIT_NONZERO"
    assert "exited with status 7" in error["message"]
    assert error["message"].endswith("stderr: first\nlast")


async def test_a_timeout_is_coded_and_kills_the_process_group(step_client: Any,
                                                             tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    argv = ["sh", "-c", f"echo $$ > {pidfile}; sleep 60 & sleep 60"]
    async with step_client(shell()) as c:
        ran = await c.run([{"stepId": "slow", "kind": "shell",
                            "params": {"argv": argv, "timeoutS": 1}}])
    error = ran.error("slow")
    assert (error["code"], error["retryable"]) == ("STEP_TIMEOUT", True)
    assert "timeoutS of 1 s" in error["message"]
    assert group_members(int(pidfile.read_text())) == []


async def test_cancelling_a_long_step_leaves_no_process_behind(step_client: Any,
                                                              tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # A child (sh) and grandchildren (two sleeps), one of them in the background.
    argv = ["sh", "-c", f"sleep 60 & echo $$ > {pidfile}; sleep 60"]
    seen: dict[str, int] = {}

    async def cancel_once_running(handle: Any) -> None:
        pgid = int(await wait_for_file(pidfile))
        seen["pgid"] = pgid
        seen["before"] = len(group_members(pgid))
        await handle.cancel("enough")

    async with step_client(shell()) as c:
        ran = await c.run([{"stepId": "long", "kind": "shell", "params": {"argv": argv}}],
                          on_start=cancel_once_running)
    assert ran.snapshot.status == RunStatus.CANCELLED
    assert ran.error("long")["code"] == "STEP_CANCELLED"
    assert seen["before"] >= 2
    assert group_members(seen["pgid"]) == []


async def test_a_grandchild_ignoring_sigterm_is_killed_after_the_grace(step_client: Any,
                                                                      tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    argv = ["sh", "-c", f"(trap '' TERM; sleep 60) & echo $$ > {pidfile}; exit 0"]
    async with step_client(shell(stop_grace_s=0.5)) as c:
        ran = await c.run([{"stepId": "stray", "kind": "shell", "params": {"argv": argv}}])
    assert ran.snapshot.status == RunStatus.COMPLETED
    assert group_members(int(pidfile.read_text())) == []


@pytest.mark.parametrize(("params", "code"), [
    ({"argv": "echo hi"}, "STEP_PARAMS_INVALID"),
    ({"argv": []}, "STEP_PARAMS_INVALID"),
    ({"argv": ["echo"], "env": {"BAD NAME": "x"}}, "STEP_PARAMS_INVALID"),
    ({"argv": ["echo"], "shell": True}, "STEP_PARAMS_INVALID"),
    ({"argv": ["no-such-command-dvt"]}, "SHELL_COMMAND_NOT_FOUND"),
    ({"argv": ["echo"], "cwd": "/no/such/dir"}, "SHELL_COMMAND_NOT_FOUND"),
])
async def test_bad_params_fail_before_anything_runs(step_client: Any, params: dict[str, Any],
                                                    code: str) -> None:
    async with step_client(shell()) as c:
        plan = [{"stepId": "b", "kind": "shell", "params": params}]
        if code == "STEP_PARAMS_INVALID":
            # The kind's params schema refuses the plan when it is validated: no run starts.
            with pytest.raises(StepParamsInvalid):
                await c.run(plan)
            return
        ran = await c.run(plan)
    error = ran.error("b")
    assert (error["code"], error["retryable"]) == (code, False)


async def test_commands_off_the_allowlist_are_refused(step_client: Any, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    async with step_client({"shell": ShellStepHandler(ShellStepSettings(commands=("echo",)))}) as c:
        ran = await c.run([
            {"stepId": "ok", "kind": "shell", "params": {"argv": ["echo", "fine"]}},
            {"stepId": "no", "kind": "shell", "params": {"argv": ["touch", str(marker)]}},
        ])
    assert ran.snapshot.step("ok").status == "SUCCESS"
    assert ran.error("no")["code"] == "SHELL_COMMAND_NOT_ALLOWED"
    assert not marker.exists()


async def test_the_entry_point_kind_refuses_every_command_by_default(step_client: Any) -> None:
    from dvt_engine.steps import default_registry

    handler = default_registry().get("shell")
    assert isinstance(handler, ShellStepHandler)
    async with step_client({"shell": handler}) as c:
        ran = await c.run([{"stepId": "d", "kind": "shell", "params": {"argv": ["true"]}}])
    assert ran.error("d")["code"] == "SHELL_COMMAND_NOT_ALLOWED"


async def test_without_an_artifact_store_nothing_runs(step_client: Any, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    async with step_client(shell(), with_artifacts=False) as c:
        ran = await c.run([{"stepId": "n", "kind": "shell",
                            "params": {"argv": ["touch", str(marker)]}}])
    assert ran.error("n")["code"] == "ARTIFACT_STORE_NOT_CONFIGURED"
    assert not marker.exists()
