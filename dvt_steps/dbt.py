"""The ``dbt`` step kind: dbt-core's ``run``, ``build``, ``test`` or ``seed`` on a project.

Params: ``{command, project, connection, select?, exclude?, vars?, target?, threads?,
fullRefresh?, rawArtifacts?}``. The project must lie inside the host's allowed roots
(:mod:`dvt_steps.tool_roots`); the connection is a named one (:mod:`dvt_engine.connections`),
turned into a profile per attempt (:mod:`dvt_steps.dbt_profiles`) whose password travels only
in an environment variable dbt masks.

dbt runs in a child process (:mod:`dvt_steps.dbt_child`) in a process group of its own, with
its target and log folders in a private temporary folder per attempt: cancelling the step
kills the group, so nothing of dbt outlives it. The output is the node counts and the failed
node ids; manifest.json and run_results.json are stored as artifacts, raw and canonical
(:mod:`dvt_steps.dbt_artifacts`), with the masked dbt log.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from dvt_engine.artifacts import ArtifactStore
from dvt_engine.connections import ConnectionSettings
from dvt_engine.errors import (
    ArtifactStoreNotConfigured,
    DbtInvocationFailed,
    DbtNodesFailed,
    StepFailed,
    StepToolMissing,
)
from dvt_engine.models.snapshot import ArtifactRef
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_steps.dbt_artifacts import canonical_json, first_failure, mask_bytes, summarize
from dvt_steps.dbt_profiles import PROFILE_NAME, adapter_for, build_profile
from dvt_steps.tool_process import read_tail, run_in_group
from dvt_steps.tool_roots import ToolRootsSettings, allowed_path

__all__ = ["COMMANDS", "DbtHandler"]

COMMANDS = ("run", "build", "test", "seed")
PARAMS = frozenset({"command", "project", "connection", "select", "exclude", "vars", "target",
                    "threads", "fullRefresh", "rawArtifacts"})
DEFAULT_TARGET = "dvt"
MAX_THREADS = 64
#: The dbt log kept as an artifact is its last 8 MiB; the error message quotes its last lines.
MAX_LOG_BYTES = 8 * 1024 * 1024
ERROR_TAIL_BYTES = 1500
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
#: dbt is told to stay quiet about anything but the work: no tracking, no version check.
CHILD_ENV = {"DO_NOT_TRACK": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
             "DBT_USE_COLORS": "false", "DBT_VERSION_CHECK": "false", "PYTHONUNBUFFERED": "1"}


class DbtHandler(StepHandler):
    """Runs one dbt command on a project in a child process; see the module docstring."""

    kind = "dbt"

    def __init__(self, *, connections: ConnectionSettings | None = None,
                 roots: ToolRootsSettings | None = None,
                 python: str | None = None) -> None:
        self.connections = connections
        self.roots = roots
        self.python = python or sys.executable

    async def run(self, ctx: StepContext) -> StepResult:
        """Run the command; fail with DBT_NODES_FAILED naming the nodes that failed."""
        params = dict(ctx.params)
        unknown = sorted(set(params) - PARAMS)
        if unknown:
            raise _bad(f"unknown dbt params: {', '.join(unknown)}", "params")
        command = params.get("command")
        if command not in COMMANDS:
            raise _bad(f"params.command must be one of {', '.join(COMMANDS)}", "command")
        roots = self.roots if self.roots is not None else ToolRootsSettings()
        project = allowed_path(params.get("project"), param="project", roots=roots, kind="dir")
        if not (project / "dbt_project.yml").is_file():
            raise _bad("params.project has no dbt_project.yml", "project")
        name = params.get("connection")
        if not isinstance(name, str) or not name:
            raise _bad("params.connection must name a connection", "connection")
        connections = self.connections if self.connections is not None else ConnectionSettings()
        connection = connections.get(name)
        adapter = adapter_for(connection)
        _require_tool(adapter)
        target = params.get("target", DEFAULT_TARGET)
        if not isinstance(target, str) or not _TARGET_NAME.match(target):
            raise _bad("params.target must be a short name (letters, digits, _ and -)", "target")
        threads = params.get("threads", 1)
        if isinstance(threads, bool) or not isinstance(threads, int) \
                or not 1 <= threads <= MAX_THREADS:
            raise _bad(f"params.threads must be an integer from 1 to {MAX_THREADS}", "threads")
        options = _options(command, params)
        raw = _bool(params, "rawArtifacts", True)
        password = None if connection.password_ref is None \
            else await ctx.secret(connection.password_ref)
        profile = build_profile(connection, password=password, target=target, threads=threads)
        store = _artifact_store(ctx)
        workdir = Path(tempfile.mkdtemp(prefix="dvt-dbt-"))  # mode 0700: only we read it
        try:
            (workdir / "profiles").mkdir()
            (workdir / "profiles" / "profiles.yml").write_text(profile.text, "utf-8")
            argv = [self.python, "-m", "dvt_steps.dbt_child", str(workdir / "verdict.json"), "--",
                    *_dbt_args(command, project, workdir, target, threads), *options]
            finished = await run_in_group(argv, env=_child_env(profile.env), cwd=workdir,
                                          stdout=workdir / "dbt.out")
            return await self._result(ctx, store, command, workdir, finished.returncode, raw)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    async def _result(self, ctx: StepContext, store: ArtifactStore | None, command: str,
                      workdir: Path, returncode: int, raw: bool) -> StepResult:
        secrets = _secrets(ctx)
        target_dir = workdir / "target"
        files = {name: mask_bytes(_read(target_dir / f"{name}.json"), secrets)
                 for name in ("run_results", "manifest")}
        log = mask_bytes(read_tail(workdir / "dbt.out", MAX_LOG_BYTES), secrets)
        run_results = json.loads(files["run_results"]) if files["run_results"] else None
        summary = summarize(run_results)
        refs: list[ArtifactRef] = []
        if store is not None:
            for name in ("run_results", "manifest"):
                if files[name]:
                    canonical = canonical_json(files[name], str(workdir))
                    refs.append(await store.put(canonical, kind=f"dbt.{name}.canonical",
                                                media_type="application/json"))
                    if raw:
                        refs.append(await store.put(files[name], kind=f"dbt.{name}",
                                                    media_type="application/json"))
            if raw:
                refs.append(await store.put(log, kind="dbt.log", media_type="text/plain"))
        verdict = _verdict(workdir / "verdict.json")
        bad = summary["failedNodes"]
        if bad or (returncode == 1 and run_results is not None):
            # Most useful first: a long list of ids may be cut at the message's size limit.
            parts = [f"dbt {command}: {summary['failed']} failed, {summary['errored']} errored, "
                     f"{summary['skipped']} skipped"]
            first = first_failure(run_results)
            if first:
                parts.append(f"first: {first}")
            if refs:
                parts.append(f"run results: {refs[0].uri}")
            more = f" and {summary['failedNodesOmitted']} more" \
                if "failedNodesOmitted" in summary else ""
            parts.append(f"failed nodes: {', '.join(bad) if bad else '(none listed)'}{more}")
            raise DbtNodesFailed(
                "; ".join(parts),
                details={"failedNodes": bad, **{k: summary[k] for k in
                                                ("failed", "errored", "skipped")}})
        if returncode != 0:
            reason = verdict.get("exception") or _last_lines(log)
            raise DbtInvocationFailed(
                f"dbt {command} did not run (exit {returncode}): {reason}",
                details={"exitCode": returncode})
        output: dict[str, Any] = {"command": command, **summary}
        output["artifactsStored"] = store is not None
        return StepResult(output=output, artifacts=refs)


def _dbt_args(command: str, project: Path, workdir: Path, target: str,
              threads: int) -> list[str]:
    return [command, "--project-dir", str(project), "--profiles-dir", str(workdir / "profiles"),
            "--profile", PROFILE_NAME, "--target", target,
            "--target-path", str(workdir / "target"), "--log-path", str(workdir / "logs"),
            "--threads", str(threads)]


def _options(command: str, params: dict[str, Any]) -> list[str]:
    """The selection, vars and full-refresh flags, checked before anything runs."""
    args: list[str] = []
    for flag in ("select", "exclude"):
        values = _names(params, flag)
        if values:
            args += [f"--{flag}", *values]
    dbt_vars = params.get("vars")
    if dbt_vars is not None:
        if not isinstance(dbt_vars, dict):
            raise _bad("params.vars must be an object", "vars")
        args += ["--vars", json.dumps(dbt_vars, sort_keys=True)]
    if _bool(params, "fullRefresh", False):
        if command == "test":
            raise _bad("params.fullRefresh applies to run, build and seed, not test",
                       "fullRefresh")
        args.append("--full-refresh")
    return args


def _names(params: dict[str, Any], name: str) -> list[str]:
    value = params.get(name)
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values \
            or not all(isinstance(v, str) and v and not v.startswith("-") for v in values):
        raise _bad(f"params.{name} must be a selector or a list of selectors", name)
    return values


def _bool(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise _bad(f"params.{name} must be true or false", name)
    return value


def _bad(message: str, param: str) -> StepFailed:
    return StepFailed(message, details={"param": param}, retryable=False)


def _require_tool(adapter: str) -> None:
    for module in ("dbt.cli.main", f"dbt.adapters.{adapter}"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise StepToolMissing(
                f"dbt steps on {adapter} need {module}: pip install 'dvt[steps-dbt]'",
                details={"module": module, "extra": "steps-dbt"})


def _artifact_store(ctx: StepContext) -> ArtifactStore | None:
    try:
        return ctx.artifacts
    except ArtifactStoreNotConfigured:
        return None  # the work still runs; the output says its artifacts were not kept


def _secrets(ctx: StepContext) -> tuple[str, ...]:
    return tuple(getattr(ctx, "resolved_secrets", ()))


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBT_ENV_SECRET_")}
    env.update(CHILD_ENV)
    env.update(extra)
    # The child imports dvt_steps from where this module is, installed or not.
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _verdict(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _last_lines(log: bytes) -> str:
    text = log[-ERROR_TAIL_BYTES:].decode("utf-8", "replace").strip()
    return text.splitlines()[-1] if text else "no output"


