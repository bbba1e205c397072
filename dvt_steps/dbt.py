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
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from dvt_engine.artifacts import ArtifactStore
from dvt_engine.connections import ConnectionSettings
from dvt_engine.errors import (
    ArtifactStoreNotConfigured,
    DbtInvocationFailed,
    DbtNodesFailed,
    StepDependencyMissing,
    StepParamsInvalid,
)
from dvt_engine.models.snapshot import ArtifactRef
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_steps.common import SECRET_REF_SCHEMA, check_params
from dvt_steps.dbt_artifacts import canonical_json, first_failure, mask_bytes, summarize
from dvt_steps.dbt_profiles import PROFILE_NAME, adapter_for, build_profile
from dvt_steps.tool_process import read_tail, run_in_group
from dvt_steps.tool_roots import ToolRootsSettings, allowed_path

__all__ = ["COMMANDS", "PARAMS_SCHEMA", "DbtHandler"]

KIND = "dbt"
COMMANDS = ("run", "build", "test", "seed")
DEFAULT_TARGET = "dvt"
MAX_THREADS = 64
#: A dbt selector: never empty, never an option (a leading "-"), no NUL.
_SELECTOR: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 1000,
                             "pattern": "^[^-\\x00][^\\x00]*$"}
_SELECTORS: dict[str, Any] = {"oneOf": [
    _SELECTOR, {"type": "array", "minItems": 1, "maxItems": 1000, "items": _SELECTOR}]}
PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "dbt step params",
    "type": "object",
    "properties": {
        "command": {"enum": list(COMMANDS)},
        "project": {"type": "string", "minLength": 1, "maxLength": 4096,
                    "pattern": "^[^\\x00]*$"},
        "connection": {"type": "string", "minLength": 1, "maxLength": 200},
        "select": _SELECTORS,
        "exclude": _SELECTORS,
        "vars": {"type": "object", "not": SECRET_REF_SCHEMA},
        "target": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$"},
        "threads": {"type": "integer", "minimum": 1, "maximum": MAX_THREADS},
        "fullRefresh": {"type": "boolean"},
        "rawArtifacts": {"type": "boolean"},
    },
    "required": ["command", "project", "connection"],
    "additionalProperties": False,
}
#: The dbt log kept as an artifact is its last 8 MiB; the error message quotes its last lines.
MAX_LOG_BYTES = 8 * 1024 * 1024
ERROR_TAIL_BYTES = 1500
#: dbt is told to stay quiet about anything but the work: no tracking, no version check.
CHILD_ENV = {"DO_NOT_TRACK": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
             "DBT_USE_COLORS": "false", "DBT_VERSION_CHECK": "false", "PYTHONUNBUFFERED": "1"}


class DbtHandler(StepHandler):
    """Runs one dbt command on a project in a child process; see the module docstring."""

    kind = KIND
    params_schema: ClassVar[dict[str, Any]] = PARAMS_SCHEMA

    def __init__(self, *, connections: ConnectionSettings | None = None,
                 roots: ToolRootsSettings | None = None,
                 python: str | None = None) -> None:
        self.connections = connections
        self.roots = roots
        self.python = python or sys.executable

    async def run(self, ctx: StepContext) -> StepResult:
        """Run the command; fail with DBT_NODES_FAILED naming the nodes that failed."""
        params = dict(ctx.params)
        check_params(KIND, PARAMS_SCHEMA, params)
        command = str(params["command"])
        roots = self.roots if self.roots is not None else ToolRootsSettings()
        project = allowed_path(params["project"], param="project", roots=roots, kind="dir")
        if not (project / "dbt_project.yml").is_file():
            raise _bad("params.project has no dbt_project.yml", "project")
        connections = self.connections if self.connections is not None else ConnectionSettings()
        connection = connections.get(str(params["connection"]))
        adapter = adapter_for(connection)
        _require_tool(adapter)
        target = str(params.get("target", DEFAULT_TARGET))
        threads = int(params.get("threads", 1))
        options = _options(command, params)
        raw = bool(params.get("rawArtifacts", True))
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
        value = params.get(flag)
        if value is not None:
            args += [f"--{flag}", *([value] if isinstance(value, str) else value)]
    if params.get("vars") is not None:
        args += ["--vars", json.dumps(params["vars"], sort_keys=True)]
    if params.get("fullRefresh", False):
        if command == "test":
            raise _bad("params.fullRefresh applies to run, build and seed, not test",
                       "fullRefresh")
        args.append("--full-refresh")
    return args


def _bad(message: str, param: str) -> StepParamsInvalid:
    return StepParamsInvalid(message, details={"kind": KIND, "param": param}, retryable=False)


def _require_tool(adapter: str) -> None:
    for module in ("dbt.cli.main", f"dbt.adapters.{adapter}"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise StepDependencyMissing(
                f"dbt steps on {adapter} need {module}: pip install 'dvt[steps-dbt]'",
                details={"module": module, "extra": "steps-dbt"}, retryable=False)


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


