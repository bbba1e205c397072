"""The live display of the `dvt` command drawn on a recording console that claims a terminal."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from dvt_cli import live


def recording_console() -> Console:
    """A console that behaves like a terminal and keeps everything it drew."""
    return Console(file=io.StringIO(), force_terminal=True, record=True, width=120,
                   color_system="standard")


def last_frame(console: Console, run_id: str) -> str:
    """The text of the display's last drawing (its block starts with ``run RUN``)."""
    text = console.export_text(styles=False, clear=False)
    return text[text.rindex(f"run {run_id}  "):]


def counts_in(frame: str) -> dict[str, int]:
    """``{state: n}`` as the block's tally line says."""
    return {name: int(n) for name, n in
            re.findall(r"(done|running|awaiting approval|failed|waiting) (\d+)", frame)}


def draw_on_terminal(monkeypatch: pytest.MonkeyPatch) -> Console:
    """Make the command see a terminal on stdout and draw its display on a recording console."""
    console = recording_console()
    monkeypatch.setattr(live, "terminal_console", lambda: console)
    monkeypatch.setattr(live, "stdout_is_terminal", lambda: True)
    return console
