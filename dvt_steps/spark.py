"""The ``spark.submit`` step kind: ``spark-submit`` of a PySpark script or a jar, in local mode.

Params: ``{application, args?, conf?, master?, mainClass?, timeoutS?}``. The application must
lie inside the host's allowed roots (:mod:`dvt_steps.tool_roots`); ``master`` is a local one
(``local``, ``local[4]``, ``local[*]``, default ``local[1]``). ``args`` and ``conf`` values may
be secret references, resolved when the step runs and masked in everything it keeps.

spark-submit runs in a process group of its own (:mod:`dvt_steps.tool_process`) with a private
working folder per attempt, so the JVM, the Python driver and Spark's scratch files all go when
the step ends or is cancelled. The output is the exit status and the tail of the application's
stdout; the driver log (Spark's stderr) is stored, masked, as a ``spark.driver_log`` artifact.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from dvt_engine.artifacts import ArtifactStore
from dvt_engine.errors import ArtifactStoreNotConfigured, SparkSubmitFailed, StepParamsInvalid
from dvt_engine.models.snapshot import ArtifactRef
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_engine.secrets import resolve_refs
from dvt_steps.common import SECRET_REF_SCHEMA, check_params
from dvt_steps.dbt_artifacts import mask_bytes
from dvt_steps.spark_runtime import java_home_for, spark_home
from dvt_steps.tool_process import read_tail, run_in_group
from dvt_steps.tool_roots import ToolRootsSettings, allowed_path

__all__ = ["DEFAULT_MASTER", "PARAMS_SCHEMA", "SparkSubmitHandler"]

KIND = "spark.submit"
DEFAULT_MASTER = "local[1]"
_SCALAR: list[dict[str, Any]] = [{"type": "string", "maxLength": 131_072,
                                  "pattern": "^[^\\x00]*$"}, {"type": "number"}]
PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "spark.submit step params",
    "type": "object",
    "properties": {
        "application": {"type": "string", "minLength": 1, "maxLength": 4096,
                        "pattern": "^[^\\x00]*$"},
        "args": {"type": "array", "maxItems": 10_000,
                 "items": {"oneOf": [*_SCALAR, SECRET_REF_SCHEMA]}},
        "conf": {"type": "object",
                 "propertyNames": {"pattern": "^spark\\.[A-Za-z0-9_.\\-]{1,200}$"},
                 "additionalProperties": {"oneOf": [*_SCALAR, {"type": "boolean"},
                                                    SECRET_REF_SCHEMA]}},
        "master": {"type": "string", "pattern": "^local(\\[(\\d{1,3}|\\*)(,\\d{1,3})?\\])?$"},
        "mainClass": {"type": "string", "pattern": "^[A-Za-z_$][A-Za-z0-9_$.]{0,300}$"},
        "timeoutS": {"type": "number", "exclusiveMinimum": 0, "maximum": 604_800},
    },
    "required": ["application"],
    "additionalProperties": False,
}
_ERROR_LINE = re.compile(r"\b[A-Za-z_.$]*(Error|Exception)\b: ")
MAX_STDOUT_TAIL = 4096
MAX_LOG_BYTES = 8 * 1024 * 1024
#: Local-mode defaults a plan's conf may override: no web UI (no port to collide on), loopback.
DEFAULT_CONF = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}


class SparkSubmitHandler(StepHandler):
    """Runs one application with spark-submit in local mode; see the module docstring."""

    kind = KIND
    params_schema: ClassVar[dict[str, Any]] = PARAMS_SCHEMA

    def __init__(self, *, roots: ToolRootsSettings | None = None,
                 python: str | None = None) -> None:
        self.roots = roots
        self.python = python or sys.executable

    async def run(self, ctx: StepContext) -> StepResult:
        """Submit the application; a non-zero exit is SPARK_SUBMIT_FAILED."""
        check_params(KIND, PARAMS_SCHEMA, ctx.params)
        roots = self.roots if self.roots is not None else ToolRootsSettings()
        application = allowed_path(ctx.params["application"], param="application",
                                   roots=roots, kind="file")
        if application.suffix not in (".py", ".jar"):
            raise _bad("params.application must be a .py script or a .jar", "application")
        params: dict[str, Any] = await resolve_refs(dict(ctx.params), ctx.secret)
        master = str(params.get("master", DEFAULT_MASTER))
        timeout_s = None if params.get("timeoutS") is None else float(params["timeoutS"])
        home = spark_home()
        store = _artifact_store(ctx)
        workdir = Path(tempfile.mkdtemp(prefix="dvt-spark-"))
        try:
            conf = {**DEFAULT_CONF, "spark.local.dir": str(workdir / "scratch"),
                    "spark.sql.warehouse.dir": str(workdir / "warehouse"),
                    **_conf(params.get("conf"))}
            argv = [str(home / "bin" / "spark-submit"), "--master", master]
            if params.get("mainClass") is not None:
                argv += ["--class", str(params["mainClass"])]
            for key, value in sorted(conf.items()):
                argv += ["--conf", f"{key}={value}"]
            argv += [str(application), *_args(params.get("args"))]
            env = _env(home, java_home_for(workdir), self.python)
            # The host's directory, so relative paths in args mean what they mean in the plan.
            finished = await run_in_group(argv, env=env, cwd=Path.cwd(), stdout=workdir / "stdout",
                                          stderr=workdir / "driver.log", timeout_s=timeout_s)
            secrets = tuple(getattr(ctx, "resolved_secrets", ()))
            log = mask_bytes(read_tail(workdir / "driver.log", MAX_LOG_BYTES), secrets)
            # A PySpark driver's own prints and traceback arrive on spark-submit's stdout.
            app_out = mask_bytes(read_tail(workdir / "stdout", MAX_LOG_BYTES), secrets)
            stdout = app_out[-MAX_STDOUT_TAIL:]
            ref = await _put_log(store, log + b"\n==> application stdout <==\n" + app_out)
            if finished.returncode != 0:
                where = f"; driver log: {ref.uri}" if ref is not None else ""
                reason = _error_line(app_out, log)
                raise SparkSubmitFailed(
                    f"spark-submit exited with {finished.returncode}: {reason}{where}",
                    details={"exitCode": finished.returncode})
            output = {"exitCode": finished.returncode,
                      "stdout": stdout.decode("utf-8", "replace"),
                      "artifactsStored": store is not None}
            return StepResult(output=output, artifacts=[ref] if ref is not None else [])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _env(home: Path, java_home: Path, python: str) -> dict[str, str]:
    env = dict(os.environ)
    # This Spark and this Java, whatever the host's environment says.
    env.update({"SPARK_HOME": str(home), "JAVA_HOME": str(java_home),
                "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python,
                "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
    env.pop("SPARK_CONF_DIR", None)
    return env


def _conf(value: Any) -> dict[str, str]:
    """The plan's conf (checked by the schema) as spark-submit's strings."""
    return {key: ("true" if item else "false") if isinstance(item, bool) else str(item)
            for key, item in (value or {}).items()}


def _args(value: Any) -> list[str]:
    return [str(a) for a in value or []]


def _bad(message: str, param: str) -> StepParamsInvalid:
    return StepParamsInvalid(message, details={"kind": KIND, "param": param}, retryable=False)


def _artifact_store(ctx: StepContext) -> ArtifactStore | None:
    try:
        return ctx.artifacts
    except ArtifactStoreNotConfigured:
        return None  # the application still runs; the output says nothing was kept


async def _put_log(store: ArtifactStore | None, log: bytes) -> ArtifactRef | None:
    if store is None:
        return None
    return await store.put(log, kind="spark.driver_log", media_type="text/plain")


def _error_line(*logs: bytes) -> str:
    """The last line naming an error (``SomeError: message``), else the last line."""
    for log in logs:
        lines = [line.strip() for line in log[-64 * 1024:].decode("utf-8", "replace").splitlines()
                 if line.strip()]
        for line in reversed(lines):
            if _ERROR_LINE.search(line) and not line.startswith(("at ", "...")):
                return line[:500]
    last = [line for log in logs for line in log.decode("utf-8", "replace").splitlines()
            if line.strip()]
    return last[-1].strip()[:500] if last else "no output"
