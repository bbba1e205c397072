"""Cooperative cancel: running steps are asked to stop, and RunCancelled follows once they settle.

Steps that never started get no events (they stay PENDING).
"""

from __future__ import annotations

DEFAULT_CANCEL_REASON = "run cancelled"


def step_cancel_reason(reason: str | None) -> str:
    """The reason running steps are given when the run is cancelled."""
    return reason or DEFAULT_CANCEL_REASON
