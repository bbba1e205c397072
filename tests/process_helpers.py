"""What the process-group tests of the tool steps look at: command lines and live members."""

from __future__ import annotations

import contextlib
import os

import psutil


def cmdline(proc: psutil.Process) -> list[str]:
    """The process's command line, or [] once it is gone."""
    with contextlib.suppress(psutil.Error):
        return proc.cmdline()
    return []


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of group ``pgid``."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found
