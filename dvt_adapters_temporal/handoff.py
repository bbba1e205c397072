"""The interpreter a workflow run ends with, handed to the run it continues as in this process.

Rebuilding the shared RunInterpreter from the carried cursor is linear in the plan (0.1 to 0.5 s
at 10,000 steps on a loaded machine, inside an activation the SDK allows 2 s), and a chain of
n steps continues as new n/50 times. The next run of the chain usually runs on the same worker,
so the ending run leaves its interpreter here, keyed by its run id, and the next run (whose
``continued_run_id`` names it) takes it instead of rebuilding. It is taken only when its own
cursor equals the carried one, so the workflow's decisions are those of the rebuilt interpreter
whether or not this answers (another worker, a replay, an evicted entry all rebuild).
Passed through the workflow sandbox, so entries outlive the run that left them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from dvt_engine.interpreter import RunInterpreter

CAPACITY = 16

_lock = threading.Lock()
_left: OrderedDict[str, RunInterpreter] = OrderedDict()
#: How often a run took over its predecessor's interpreter or rebuilt one (for benchmarks).
STATS: dict[str, int] = {"taken": 0, "rebuilt": 0}


def leave(run_id: str, interp: RunInterpreter) -> None:
    """Leave the interpreter of an ending workflow run for the run that continues it."""
    with _lock:
        _left[run_id] = interp
        while len(_left) > CAPACITY:
            _left.popitem(last=False)


def take(continued_run_id: str | None, cursor: Mapping[str, Any]) -> RunInterpreter | None:
    """The interpreter the previous run left, if its state is exactly ``cursor``; else None."""
    if not continued_run_id:
        return None
    with _lock:
        interp = _left.pop(continued_run_id, None)
    if interp is not None and interp.to_cursor(compact="stepRanges" in cursor) != dict(cursor):
        interp = None
    STATS["taken" if interp is not None else "rebuilt"] += 1
    return interp
