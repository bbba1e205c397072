"""The built-in step kinds present in every installation (contract §2.2)."""

from __future__ import annotations

import math
from typing import Any

from dvt_engine.errors import StepFailed, UsageError
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_engine.steps.failure import HandlerFailure

APPROVAL_KIND = "approval"
DEFAULT_FAIL_CODE = "STEP_FAILED"
DEFAULT_FAIL_MESSAGE = "injected failure"


class NoopHandler(StepHandler):
    """Does nothing and succeeds."""

    kind = "noop"

    async def run(self, ctx: StepContext) -> StepResult:
        """Succeed with no output."""
        return StepResult()


class SleepHandler(StepHandler):
    """Waits ``params.ms`` milliseconds; stops at once when the step is cancelled."""

    kind = "sleep"

    async def run(self, ctx: StepContext) -> StepResult:
        """Sleep through the context, so cancellation interrupts it."""
        ms = ctx.params.get("ms", 0)
        if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms) \
                or ms < 0:
            raise StepFailed("params.ms must be a non-negative number of milliseconds",
                             details={"param": "ms"}, retryable=False)
        await ctx.sleep(ms / 1000.0)
        return StepResult()


class EchoHandler(StepHandler):
    """Returns its params as its output."""

    kind = "echo"

    async def run(self, ctx: StepContext) -> StepResult:
        """Output the params unchanged (secret references stay references)."""
        return StepResult(output=dict(ctx.params))


class FailHandler(StepHandler):
    """Fails on purpose: always, or on engine attempts 1..failTimes and then succeeds.

    ``params.code`` (default STEP_FAILED), ``params.retryable`` (default true),
    ``params.message`` and ``params.failTimes``.
    """

    kind = "fail"

    async def run(self, ctx: StepContext) -> StepResult:
        """Raise the configured failure, or succeed once failTimes attempts have failed."""
        params = ctx.params
        fail_times = params.get("failTimes")
        if fail_times is not None:
            if isinstance(fail_times, bool) or not isinstance(fail_times, int) or fail_times < 0:
                raise StepFailed("params.failTimes must be a non-negative integer",
                                 details={"param": "failTimes"}, retryable=False)
            if ctx.engine_attempt_id > fail_times:
                return StepResult(output={"failedAttempts": fail_times})
        raise HandlerFailure(
            _str_param(params, "code", DEFAULT_FAIL_CODE),
            _str_param(params, "message", DEFAULT_FAIL_MESSAGE),
            retryable=_bool_param(params, "retryable", True),
            details={"injected": True},
        )


class ApprovalHandler(StepHandler):
    """An approval gate. The step runner opens gates itself; running one directly is a misuse."""

    kind = APPROVAL_KIND

    async def run(self, ctx: StepContext) -> StepResult:
        """Refuse: a gate is resolved by APPROVE_STEP, never by running a handler."""
        raise UsageError(
            "approval steps are gates: open them with StepRunner.run and resolve them with "
            "StepRunner.complete_gate or expire_gate",
            details={"stepId": ctx.step_id},
        )


def _str_param(params: Any, name: str, default: str) -> str:
    value = params.get(name, default)
    if not isinstance(value, str) or not value:
        raise StepFailed(f"params.{name} must be a non-empty string",
                         details={"param": name}, retryable=False)
    return value


def _bool_param(params: Any, name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise StepFailed(f"params.{name} must be true or false",
                         details={"param": name}, retryable=False)
    return value


BUILTIN_HANDLERS: dict[str, StepHandler] = {
    h.kind: h
    for h in (NoopHandler(), SleepHandler(), EchoHandler(), FailHandler(), ApprovalHandler())
}
