"""Pause and drain (contract §6.4).

A pause stops new steps at once. Running steps finish (the run is PAUSED + DRAINING until they
settle), or, on an engine configured with ``cancelInFlightOnPause``, working steps are cancelled
and run again as a new logical attempt on resume. Waiting gates are never cancelled by a pause:
they do no work. Resume never re-runs a step that completed.
"""

from __future__ import annotations

from collections.abc import Iterable

PAUSE_CANCEL_REASON = "run paused"


def steps_to_cancel_on_pause(
    cancel_in_flight_on_pause: bool, working: Iterable[str]
) -> tuple[str, ...]:
    """The running (non-gate) steps a pause cancels."""
    return tuple(working) if cancel_in_flight_on_pause else ()


def runs_again_on_resume(outcome: str, cancelled_by_pause: bool, cancel_requested: bool) -> bool:
    """True when a settled step was stopped by a pause and gets a new logical attempt."""
    return outcome == "cancelled" and cancelled_by_pause and not cancel_requested
