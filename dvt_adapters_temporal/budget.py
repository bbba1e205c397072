"""When the interpreter workflow continues as new: its step and history-size budget.

Pure functions of the workflow's configuration and ``workflow.info()``, so the workflow's
decisions stay deterministic on replay.
"""

from __future__ import annotations

from typing import Protocol

from dvt_adapters_temporal.wire import WorkflowConfig


class HistoryInfo(Protocol):
    """The part of ``workflow.Info`` the budget reads."""

    def get_current_history_size(self) -> int: ...
    def is_continue_as_new_suggested(self) -> bool: ...


def _history_full(cfg: WorkflowConfig, info: HistoryInfo, base: int) -> bool:
    return bool(info.get_current_history_size() - base >= cfg.continue_as_new_history_bytes
                or info.is_continue_as_new_suggested())


def budget_spent(cfg: WorkflowConfig, info: HistoryInfo, started: int, *,
                 size_budget: bool, base: int = 0) -> bool:
    """This workflow run has started its share of steps or grown its history enough.

    ``base`` is the history size the run began with (its input, the carried cursor), which the
    budget leaves out: the cursor of a large plan alone may be near the budget, and counting it
    would end every later run after a single step. Runs begun before that rule pass 0.
    """
    if started >= cfg.continue_as_new_after_steps:
        return True
    if not size_budget:
        return False  # runs begun before the size budget: the step count alone
    if started == 0:
        return False  # always make progress, however large the carried state is
    return _history_full(cfg, info, base)


def continue_now(cfg: WorkflowConfig, info: HistoryInfo, started: int, *,
                 size_budget: bool, base: int = 0) -> bool:
    """With nothing running and no step deferred: whether to continue as new now."""
    if size_budget:
        return budget_spent(cfg, info, started, size_budget=True, base=base)
    # Runs begun before the size budget continue only for deferred steps, or when the history
    # estimate says so.
    return started > 0 and _history_full(cfg, info, base)
