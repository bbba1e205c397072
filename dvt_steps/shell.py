"""The ``shell`` step kind: run one command from an argv list, never through a shell string.

The child starts in a session of its own, so it and everything it starts share one process
group; when the step ends for any reason (exit, timeout, cancel) whatever is left of that group
gets SIGTERM, then SIGKILL after ``stop_grace_s``. A process that starts a session of its own
escapes the group: use a cgroup-managing supervisor for untrusted commands.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from dvt_engine.errors import (
    ShellCommandNotAllowed,
    ShellCommandNotFound,
    ShellExitNonzero,
    StepTimeout,
)
from dvt_engine.models.snapshot import ArtifactRef
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_steps.common import SECRET_REF_SCHEMA, Secrets, check_params, mask_bytes, tail_text
from dvt_steps.settings import ShellStepSettings
from dvt_steps.tool_process import group_alive

KIND = "shell"
#: Host variables every command inherits (when the worker has them); the host may add names.
BASE_ENV = ("PATH", "HOME", "LANG")
ANY_COMMAND = "*"
READ_CHUNK = 64 * 1024
STDERR_TAIL_BYTES = 1000
_NO_NUL = "^[^\u0000]*$"

PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "shell step params",
    "type": "object",
    "properties": {
        "argv": {
            "type": "array", "minItems": 1, "maxItems": 10_000,
            "prefixItems": [{"type": "string", "minLength": 1}],
            "items": {"type": "string", "pattern": _NO_NUL, "maxLength": 131_072},
        },
        "env": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"},
            "additionalProperties": {
                "oneOf": [{"type": "string", "pattern": _NO_NUL}, SECRET_REF_SCHEMA],
            },
        },
        "cwd": {"type": "string", "minLength": 1, "pattern": _NO_NUL},
        "timeoutS": {"type": "number", "exclusiveMinimum": 0, "maximum": 604_800},
    },
    "required": ["argv"],
    "additionalProperties": False,
}


class ShellStepHandler(StepHandler):
    """Runs ``params.argv`` with a minimal environment; stdout and stderr become artifacts."""

    kind: ClassVar[str] = KIND
    params_schema: ClassVar[dict[str, Any]] = PARAMS_SCHEMA

    def __init__(self, settings: ShellStepSettings | None = None) -> None:
        self.settings = settings

    async def run(self, ctx: StepContext) -> StepResult:
        """Check, run and record one command."""
        settings = self.settings or ShellStepSettings()
        params = ctx.params
        check_params(KIND, PARAMS_SCHEMA, params)
        argv = [str(a) for a in params["argv"]]
        _check_allowed(argv[0], settings.commands)
        _ = ctx.artifacts  # no artifact store, no command: its output would have nowhere to go
        secrets = Secrets(ctx)
        env = await _environment(params.get("env") or {}, settings.env_allow, secrets)
        timeout_s = params.get("timeoutS")
        if params.get("cwd") is not None:
            run = await _Run.start(argv, env, _directory(str(params["cwd"])), settings)
            return await run.finish(ctx, timeout_s, secrets)
        with tempfile.TemporaryDirectory(prefix="dvt-shell-",
                                         ignore_cleanup_errors=True) as scratch:
            run = await _Run.start(argv, env, Path(scratch), settings)
            return await run.finish(ctx, timeout_s, secrets)


def _directory(text: str) -> Path:
    cwd = Path(text)
    if not cwd.is_dir():
        raise ShellCommandNotFound(f"cwd {text!r} is not a directory",
                                   details={"cwd": text}, retryable=False)
    return cwd


def _check_allowed(command: str, allowed: tuple[str, ...]) -> None:
    if ANY_COMMAND in allowed or command in allowed:
        return
    raise ShellCommandNotAllowed(
        f"command {command!r} is not on this worker's shell command allowlist",
        details={"command": command}, retryable=False)


async def _environment(
    given: Mapping[str, Any], widen: tuple[str, ...], secrets: Secrets
) -> dict[str, str]:
    env = {name: os.environ[name] for name in (*BASE_ENV, *widen) if name in os.environ}
    for name, value in given.items():
        env[name] = str(await secrets.value(value))
    return env


class _Run:
    """One started command: its process, its output readers and its stopping."""

    def __init__(self, proc: asyncio.subprocess.Process, exited: asyncio.Future[None],
                 argv: list[str], settings: ShellStepSettings) -> None:
        self.proc = proc
        self.exited = exited
        self.argv = argv
        self.settings = settings
        assert proc.stdout is not None
        assert proc.stderr is not None
        limit = settings.max_output_bytes
        self.readers = (asyncio.ensure_future(_drain(proc.stdout, limit)),
                        asyncio.ensure_future(_drain(proc.stderr, limit)))

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str], cwd: Path,
                    settings: ShellStepSettings) -> _Run:
        """Start the command in a new session (its own process group), stdin closed."""
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _Protocol(loop), *argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
                cwd=cwd, start_new_session=True)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise ShellCommandNotFound(
                f"cannot run {argv[0]!r}: {exc.strerror or type(exc).__name__}",
                details={"command": argv[0]}, retryable=False) from None
        proc = asyncio.subprocess.Process(transport, protocol, loop)
        return cls(proc, protocol.exited, argv, settings)

    async def finish(self, ctx: StepContext, timeout_s: float | None,
                     secrets: Secrets) -> StepResult:
        """Wait for the command (bounded by ``timeout_s``) and turn what it did into a result."""
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self.exited)
            except TimeoutError:
                raise StepTimeout(
                    f"command {self.argv[0]!r} ran longer than its timeoutS of {timeout_s:g} s",
                    details={"timeoutS": timeout_s}) from None
        finally:
            # Exit, timeout or cancel: nothing of the command's process group outlives the step.
            await self._end_group()
        (out, out_total), (err, err_total) = await self._collected()
        masked = secrets.values
        out_ref = await _store(ctx, mask_bytes(bytes(out), masked), "shell.stdout")
        err_masked = mask_bytes(bytes(err), masked)
        err_ref = await _store(ctx, err_masked, "shell.stderr")
        code = self.proc.returncode
        assert code is not None
        if code != 0:
            how = f"was killed by signal {_signal_name(-code)}" if code < 0 \
                else f"exited with status {code}"
            tail = tail_text(err_masked, STDERR_TAIL_BYTES)
            raise ShellExitNonzero(
                f"command {self.argv[0]!r} {how}" + (f"; stderr: {tail}" if tail else ""),
                details={"exitCode": code})
        return StepResult(
            output={"exitCode": code,
                    "stdout": _summary(out_ref, out_total, self.settings.max_output_bytes),
                    "stderr": _summary(err_ref, err_total, self.settings.max_output_bytes)},
            artifacts=[out_ref, err_ref])

    async def _end_group(self) -> None:
        pgid = self.proc.pid  # start_new_session: the child leads a group of its own pid
        if not _signal_group(pgid, signal.SIGTERM):
            return
        deadline = time.monotonic() + self.settings.stop_grace_s
        while time.monotonic() < deadline:
            if not self.exited.done():
                await asyncio.wait({self.exited}, timeout=0.05)
            elif not group_alive(pgid):
                return
            else:
                await asyncio.sleep(0.05)  # grandchildren still unwinding after SIGTERM
        _signal_group(pgid, signal.SIGKILL)
        await asyncio.wait({self.exited}, timeout=self.settings.stop_grace_s + 1)

    async def _collected(self) -> tuple[tuple[bytearray, int], tuple[bytearray, int]]:
        # A process that left the group may still hold the pipes: do not wait on it for long.
        done, pending = await asyncio.wait(self.readers, timeout=self.settings.stop_grace_s + 1)
        for reader in pending:
            reader.cancel()
        out = self.readers[0].result() if self.readers[0] in done else (bytearray(), 0)
        err = self.readers[1].result() if self.readers[1] in done else (bytearray(), 0)
        return out, err


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The stream protocol, plus a future set when the child exits.

    ``Process.wait()`` (Python 3.11) returns only once every pipe is closed too, which a
    grandchild holding stdout delays for as long as it lives.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=READ_CHUNK, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        """Note the exit, then let the stream protocol do its part."""
        if not self.exited.done():
            self.exited.set_result(None)
        super().process_exited()


async def _drain(stream: asyncio.StreamReader, limit: int) -> tuple[bytearray, int]:
    """Read a pipe to its end, keeping the first ``limit`` bytes and counting them all."""
    kept = bytearray()
    total = 0
    while chunk := await stream.read(READ_CHUNK):
        total += len(chunk)
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return kept, total


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member changed its credentials; it is still there
    return True


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


async def _store(ctx: StepContext, data: bytes, kind: str) -> ArtifactRef:
    return await ctx.artifacts.put(data, kind=kind, media_type="text/plain")


def _summary(ref: ArtifactRef, total: int, limit: int) -> dict[str, Any]:
    # sizeBytes is what was stored (masked, at most the limit); truncated: the command wrote more.
    return {"uri": ref.uri, "sizeBytes": ref.size_bytes, "truncated": total > limit}
