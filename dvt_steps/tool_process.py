"""Running a tool (dbt, spark-submit) as a child process in a process group of its own.

A tool spawns children of its own (spark-submit starts a JVM, the JVM a Python worker), and
killing only the process we started would leave them running. So the child leads a new session
(``start_new_session``): its process group holds everything it starts, and stopping the step
signals that whole group, SIGTERM first so a JVM can run its shutdown hooks, then SIGKILL.
Whatever is still in the group when the leader exits on its own is killed as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dvt_engine.errors import StepTimeout

__all__ = ["TERM_GRACE_S", "Finished", "group_alive", "read_tail", "run_in_group"]

#: How long a tool has after SIGTERM to exit before its process group is killed.
TERM_GRACE_S = 3.0


@dataclass(frozen=True)
class Finished:
    """How a tool's process ended."""

    returncode: int
    pgid: int


async def run_in_group(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdout: Path,
    stderr: Path | None = None,
    timeout_s: float | None = None,
    term_grace_s: float = TERM_GRACE_S,
) -> Finished:
    """Run ``argv`` to its end with output in files; on cancel or timeout kill its group.

    ``stderr`` None sends it to ``stdout``'s file. A timeout raises STEP_TIMEOUT once the group
    is gone; a cancelled task re-raises CancelledError once the group is gone.
    """
    # Opening two local files is instant; the child inherits the descriptors.
    out = open(stdout, "wb")  # noqa: ASYNC230, SIM115
    err = open(stderr, "wb") if stderr is not None else None  # noqa: ASYNC230, SIM115
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
            stderr=err if err is not None else asyncio.subprocess.STDOUT,
            env=dict(env), cwd=str(cwd), start_new_session=True)
    finally:
        out.close()
        if err is not None:
            err.close()
    pgid = proc.pid  # the leader of a new session leads its process group
    try:
        try:
            code = await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            await _stop_group(proc, pgid, term_grace_s)
            raise StepTimeout(f"the tool ran longer than {timeout_s:g} s and was stopped",
                              details={"timeoutS": timeout_s}) from None
        except asyncio.CancelledError:
            await _stop_group(proc, pgid, term_grace_s)
            raise
    finally:
        # Last resort (a second cancel while stopping): nothing of the group outlives the step.
        _signal_group(pgid, signal.SIGKILL)
    return Finished(returncode=code, pgid=pgid)


async def _stop_group(proc: asyncio.subprocess.Process, pgid: int, grace_s: float) -> None:
    _signal_group(pgid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace_s)
    _signal_group(pgid, signal.SIGKILL)
    await proc.wait()
    await _group_gone(pgid, grace_s)


async def _group_gone(pgid: int, limit_s: float) -> None:
    """Return once no live process is left in the group (bounded by ``limit_s``).

    SIGKILL is delivered at once but a member (a grandchild such as multiprocessing's
    resource tracker) finishes exiting on its own time; the step ends only after it has.
    """
    deadline = asyncio.get_running_loop().time() + limit_s
    while group_alive(pgid) and asyncio.get_running_loop().time() < deadline:
        _signal_group(pgid, signal.SIGKILL)
        await asyncio.sleep(0.02)  # the kernel has no event for a group's end: look again


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def read_tail(path: Path, limit: int) -> bytes:
    """At most the last ``limit`` bytes of a file, whole lines only (empty when missing).

    A cut line is dropped, so a secret the cut fell into cannot survive in part, unmasked.
    """
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - limit))
            data = file.read()
    except FileNotFoundError:
        return b""
    if size > limit:
        data = data.partition(b"\n")[2]
    return data


def group_alive(pgid: int) -> bool:
    """True while a process of the group is alive; zombies (dead, not yet reaped) do not count.

    Grandchildren are reparented to the worker's init, which may reap them late; signal 0 would
    count them. Where /proc is missing, signal 0 is the answer.
    """
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat"), "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            return True
    return False
