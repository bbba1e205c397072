"""A step failure the log holds before the engine hears of it: the plan the tests share, and a
step runner that reports one step's outcome only when the test lets it."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from dvt_engine.steps.runner import StepRunner

_FAILING_BESIDE_A_GATE: list[dict[str, Any]] = [
    {"stepId": "start", "kind": "noop"},
    {"stepId": "bad", "kind": "fail", "dependsOn": ["start"],
     "params": {"code": "BOOM", "retryable": False}},
    {"stepId": "gate", "kind": "approval", "dependsOn": ["start"]},
    {"stepId": "after-gate", "kind": "noop", "dependsOn": ["gate"]},
]


def failing_beside_a_gate() -> list[dict[str, Any]]:
    """Steps of a plan where ``bad`` fails (not retryable) while ``gate`` waits, and
    ``after-gate`` would start once the gate is approved."""
    return copy.deepcopy(_FAILING_BESIDE_A_GATE)


def report_outcome_late(monkeypatch: pytest.MonkeyPatch, step_id: str) -> asyncio.Event:
    """Make the step runner hold ``step_id``'s outcome, already written to the log, from its
    engine until the returned event is set (engines running their steps in this process)."""
    released = asyncio.Event()
    run_step = StepRunner.run

    async def report_late(self: StepRunner, invocation: Any, *args: Any, **kwargs: Any) -> Any:
        outcome = await run_step(self, invocation, *args, **kwargs)
        if invocation.step.step_id == step_id:
            await released.wait()
        return outcome

    monkeypatch.setattr(StepRunner, "run", report_late)
    return released
