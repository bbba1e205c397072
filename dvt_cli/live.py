"""The live progress display of `dvt run` and `dvt events -f` on a terminal (rich).

The display is fed the same events the plain output prints: each event still prints as its
line (above the display), and a status block below it counts the steps per state, shows the
elapsed time and names the step that holds the run up. Plain lines only - byte-identical to
before - when stdout is no terminal, under --json, with --no-live or with DVT_NO_LIVE=1.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from dvt_cli.output import describe_event, safe
from dvt_engine.models.events import Event

NO_LIVE_ENV = "DVT_NO_LIVE"

#: Display states, in the order they are counted.
DONE, RUNNING, APPROVAL, FAILED, WAITING = "done", "running", "awaiting approval", "failed", \
    "waiting"
STATES = (DONE, RUNNING, APPROVAL, FAILED, WAITING)
_STYLES = {DONE: "green", RUNNING: "cyan", APPROVAL: "yellow", FAILED: "red", WAITING: "dim"}
_EVENT_STATES = {"StepStarted": RUNNING, "StepCompleted": DONE, "StepSkipped": DONE,
                 "StepFailed": FAILED, "StepAwaitingApproval": APPROVAL}
_RUN_STATES = {"RunStarted": "RUNNING", "RunPaused": "PAUSED", "RunResumed": "RUNNING",
               "RunCompleted": "COMPLETED", "RunFailed": "FAILED", "RunCancelled": "CANCELLED"}


def live_wanted(as_json: bool, no_live: bool) -> bool:
    """Whether to show the live display: a terminal on stdout, no --json, no opt-out."""
    if as_json or no_live or os.environ.get(NO_LIVE_ENV, "").strip() not in ("", "0"):
        return False
    return stdout_is_terminal()


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal (not a pipe or a file)."""
    return sys.stdout.isatty()


def terminal_console() -> Console:
    """The console the display draws on: stdout."""
    return Console()


def _when(event: Event) -> datetime:
    return event.occurred_at or event.emitted_at


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    """A run's progress as the display shows it, built from its events (thread-safe: the
    display refreshes from its own thread while events arrive)."""

    def __init__(self, run_id: str, step_ids: Iterable[str] = (),
                 clock: Callable[[], datetime] | None = None) -> None:
        self.run_id = run_id
        self.status = "PENDING"
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._states: dict[str, str] = dict.fromkeys(step_ids, WAITING)
        self._since: dict[str, datetime] = {}
        self._first: datetime | None = None
        self._last: datetime | None = None

    def apply(self, event: Event) -> None:
        """Take one event of the run into account."""
        with self._lock:
            at = _when(event)
            self._first = self._first or at
            self._last = at
            et = str(event.event_type)
            if event.step_id and et in _EVENT_STATES:
                self._states[event.step_id] = _EVENT_STATES[et]
                self._since[event.step_id] = at
            elif et in _RUN_STATES:
                self.status = _RUN_STATES[et]

    @property
    def ended(self) -> bool:
        """Whether the run reached a terminal status."""
        return self.status in ("COMPLETED", "FAILED", "CANCELLED")

    def counts(self) -> dict[str, int]:
        """How many steps are in each display state."""
        with self._lock:
            found = dict.fromkeys(STATES, 0)
            for state in self._states.values():
                found[state] += 1
            return found

    def elapsed(self) -> float:
        """Seconds since the run's first event (until its last one once it ended)."""
        with self._lock:
            if self._first is None:
                return 0.0
            end = self._last if self.ended and self._last else self._clock()
            return max(0.0, (end - self._first).total_seconds())

    def holding(self) -> tuple[str, str] | None:
        """The step the run waits for and why: one awaiting approval first (the earliest),
        else the one running longest; None when nothing runs."""
        with self._lock:
            for wanted in (APPROVAL, RUNNING):
                steps = [s for s, state in self._states.items() if state == wanted]
                if steps:
                    step = min(steps, key=lambda s: self._since[s])
                    held = (self._clock() - self._since[step]).total_seconds()
                    return step, f"{wanted} for {_seconds(max(0.0, held))}"
            return None

    def render(self) -> RenderableType:
        """The status block."""
        counts = self.counts()
        head = Text.assemble(("run ", "bold"), safe(self.run_id), "  ", (self.status, "bold"),
                             f"  elapsed {_seconds(self.elapsed())}")
        tally = Text("  ").join(
            Text(f"{name} {counts[name]}", style=_STYLES[name] if counts[name] else "dim")
            for name in STATES)
        lines: list[RenderableType] = [head, tally]
        held = None if self.ended else self.holding()
        if held is not None:
            step, why = held
            line = Text.assemble("held up by ", (safe(step), "bold"), f" ({why})")
            if why.startswith(APPROVAL):
                line.append(f": dvt signal {safe(self.run_id)} approve {safe(step)}")
            lines.append(line)
        return Group(*lines)


class LiveView:
    """The display while it is on: ``feed`` prints an event's line and updates the block."""

    def __init__(self, progress: Progress, live: Live) -> None:
        self.progress = progress
        self._live = live

    def feed(self, event: Event) -> None:
        """Show one event."""
        self.progress.apply(event)
        # rich draws the block it last refreshed under a printed line: refresh first, so the
        # line and the block below it agree.
        self._live.refresh()
        # Text, not markup: nothing in an event line is interpreted by the terminal or rich.
        self._live.console.print(Text(describe_event(event)), soft_wrap=True)


@contextmanager
def live_view(run_id: str, step_ids: Iterable[str] = (), console: Console | None = None,
              clock: Callable[[], datetime] | None = None) -> Iterator[LiveView]:
    """Show the live display on ``console`` (default: stdout) while the block runs."""
    progress = Progress(run_id, step_ids, clock)
    # Refreshes twice a second on its own, so elapsed times move between events.
    with Live(get_renderable=progress.render, console=console or terminal_console(),
              refresh_per_second=2, transient=False, redirect_stdout=False,
              redirect_stderr=False) as live:
        yield LiveView(progress, live)
