"""Steps: the handler registry, the built-in kinds, and the runner every engine's worker uses."""

from dvt_engine.steps.builtins import APPROVAL_KIND, BUILTIN_HANDLERS
from dvt_engine.steps.context import CancelToken, RunnerStepContext
from dvt_engine.steps.failure import HandlerFailure, classify
from dvt_engine.steps.invocation import OutcomeStatus, StepInvocation, StepOutcome
from dvt_engine.steps.outputs import MAX_OUTPUT_BYTES
from dvt_engine.steps.registry import (
    ENTRY_POINT_GROUP,
    FunctionStepHandler,
    HandlerRegistry,
    builtin_registry,
    default_registry,
    step_handler,
)
from dvt_engine.steps.runner import StepRunner, gate_timeout_ms

__all__ = [
    "APPROVAL_KIND",
    "BUILTIN_HANDLERS",
    "ENTRY_POINT_GROUP",
    "MAX_OUTPUT_BYTES",
    "CancelToken",
    "FunctionStepHandler",
    "HandlerFailure",
    "HandlerRegistry",
    "OutcomeStatus",
    "RunnerStepContext",
    "StepInvocation",
    "StepOutcome",
    "StepRunner",
    "builtin_registry",
    "classify",
    "default_registry",
    "gate_timeout_ms",
    "step_handler",
]
