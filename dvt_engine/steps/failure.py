"""How a handler's exception becomes a step error: code, message, retryable."""

from __future__ import annotations

from typing import Any

from dvt_engine.errors import DvtError, ErrorCode
from dvt_engine.models.plan import StepSpec
from dvt_engine.models.snapshot import StepError

MAX_MESSAGE_CHARS = 2000


class HandlerFailure(Exception):
    """Raise from a handler to fail with a code of the host's own (``BAD_SQL``, ...).

    dvt's own errors (DvtError subclasses) keep their codes; this class is for codes dvt does
    not know, which plans may name in ``retry.nonRetryableErrorCodes``.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = True,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def classify(exc: BaseException, step: StepSpec) -> StepError:
    """The step error for ``exc``: coded errors keep code and retryable, others are STEP_FAILED.

    A code listed in the step's ``retry.nonRetryableErrorCodes`` is never retryable.
    """
    if isinstance(exc, HandlerFailure):
        code, message, retryable = exc.code, exc.message, exc.retryable
    elif isinstance(exc, DvtError):
        code, message, retryable = str(exc.code), exc.message, exc.retryable
    else:
        code = str(ErrorCode.STEP_FAILED)
        text = str(exc)
        message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        retryable = True
    if step.retry is not None and code in step.retry.non_retryable_error_codes:
        retryable = False
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return StepError(code=code, message=message or code, retryable=retryable)
