"""Settlement: what one logical attempt's outcome means for the run.

Every engine reports an attempt's end to the interpreter as one of six settlements, with the
error that ended it. Anything else the step runner may answer (an outcome an engine does not
expect at that point) counts as a failure, so a run never waits for a step that has stopped.
``not_started`` is an attempt its engine stopped before any of its events were written;
``skipped`` a signal wait whose timeout skipped it (plan v1.3 ``onTimeout: skip``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dvt_engine.errors import ErrorCode
from dvt_engine.models.run import StepStatus
from dvt_engine.models.snapshot import StepError

StepSettlement = Literal["succeeded", "failed", "cancelled", "refused", "not_started", "skipped"]
SETTLEMENTS: tuple[StepSettlement, ...] = (
    "succeeded", "failed", "cancelled", "refused", "not_started", "skipped")
#: An attempt stopped before it began (no event of it exists): the step is PENDING again with
#: the same logical attempt, so the log's attempt numbers stay consecutive.
NOT_STARTED: StepSettlement = "not_started"


@dataclass(frozen=True)
class Settlement:
    """How an attempt settled, and the error that ended it (if any)."""

    outcome: StepSettlement
    error: StepError | None = None


def settlement_of(status: str, error: StepError | None = None) -> Settlement:
    """The settlement of a step runner outcome ``status`` (with its error, if any)."""
    outcome: StepSettlement = "failed"
    for known in SETTLEMENTS:
        if status == known:
            outcome = known
    if error is None and outcome == "failed":
        error = StepError(code=str(ErrorCode.STEP_FAILED), message=status)
    return Settlement(outcome, error)


def step_status_after(outcome: StepSettlement) -> StepStatus:
    """The step's status once an attempt settled so (a refused start: the log skipped it)."""
    if outcome == "succeeded":
        return StepStatus.SUCCESS
    if outcome in ("refused", "skipped"):
        return StepStatus.SKIPPED
    if outcome == NOT_STARTED:
        return StepStatus.PENDING
    return StepStatus.FAILED


def records_failure(outcome: StepSettlement) -> bool:
    """True when the settlement is a step failure that the failure policy acts on."""
    return outcome == "failed"
