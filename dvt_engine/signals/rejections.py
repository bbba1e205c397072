"""Turning a recorded refusal back into an exception, for callers who prefer raising."""

from __future__ import annotations

from dvt_engine.errors import ERROR_CLASSES, DvtError, ErrorCode, UsageError
from dvt_engine.models.signals import SignalDecision


def rejection_error(decision: SignalDecision) -> DvtError | None:
    """The coded error a refused decision stands for, or None when it was accepted."""
    if decision.accepted:
        return None
    details = {
        "signalId": decision.signal_id,
        "signalType": str(decision.type),
        "runId": decision.run_id,
        "recorded": decision.run_seq is not None,
        "duplicate": decision.duplicate,
    }
    message = decision.message or f"{decision.type} was refused"
    try:
        cls = ERROR_CLASSES[ErrorCode(decision.error_code or "")]
    except (KeyError, ValueError):
        # A record written by a newer producer may carry a code this version does not know.
        return UsageError(
            f"{message} (code {decision.error_code!r})",
            details={**details, "errorCode": decision.error_code},
        )
    return cls(message, details=details)


def raise_for_rejection(decision: SignalDecision) -> SignalDecision:
    """Return an accepted decision unchanged; raise the matching coded error otherwise."""
    error = rejection_error(decision)
    if error is not None:
        raise error
    return decision
