"""The workflow's view of a run: step states plus the shared scheduler's decisions.

Pure and deterministic (no I/O, no clock), so it runs inside the workflow sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dvt_adapters_temporal.wire import StepOutcome, StepState


@dataclass(frozen=True)
class Verdict:
    """Whether the run is over, and how."""

    terminal: bool
    status: str = "RUNNING"
    step_id: str | None = None
    code: str | None = None
    message: str | None = None
    awaiting_operator: bool = False


class Interpreter:
    """Tracks step states of one plan and answers the scheduling questions."""

    def __init__(self, plan: dict[str, Any], steps: dict[str, StepState]) -> None:
        self._plan = plan
        self._specs: dict[str, dict[str, Any]] = {s["stepId"]: s for s in plan["steps"]}
        self._order: list[str] = [s["stepId"] for s in plan["steps"]]
        self._states: dict[str, StepState] = {
            sid: steps.get(sid, StepState()) for sid in self._order
        }
        meta = plan["metadata"]
        self.failure_policy: str = meta.get("failurePolicy", "failFast")
        self.operator_timeout_ms: int = int(meta.get("operatorTimeoutMs", 86_400_000))
        self.plan_params: dict[str, Any] = dict(plan.get("params") or {})

    def spec(self, step_id: str) -> dict[str, Any]:
        """The step's spec as plan JSON."""
        return self._specs[step_id]

    def step_states(self) -> dict[str, StepState]:
        """Every step's state, in plan order."""
        return dict(self._states)

    def attempt(self, step_id: str) -> int:
        """The step's current logical attempt."""
        return self._states[step_id].attempt

    def _any_failed(self) -> bool:
        return any(s.status == "FAILED" for s in self._states.values())

    def ready(self, exclude: set[str]) -> list[str]:
        """Steps whose dependencies are satisfied and that have not started, in plan order."""
        if self.failure_policy == "failFast" and self._any_failed():
            return []
        out = []
        for sid in self._order:
            st = self._states[sid]
            if st.status != "PENDING" or sid in exclude:
                continue
            deps = self._specs[sid].get("dependsOn") or []
            if all(self._states[d].status in ("SUCCESS", "SKIPPED") for d in deps):
                out.append(sid)
        return out

    def mark_running(self, step_id: str) -> int:
        """Record that the step's current attempt started; returns its logical attempt."""
        st = self._states[step_id]
        st.status = "RUNNING"
        return st.attempt

    def record(self, step_id: str, outcome: StepOutcome) -> None:
        """Fold a finished attempt into the state."""
        st = self._states[step_id]
        if outcome.status == "SUCCESS":
            st.status = "SUCCESS"
        elif outcome.status == "CANCELLED":
            st.status = "CANCELLED"
        else:
            st.status = "FAILED"
        st.error_code = outcome.error_code
        st.error_message = outcome.error_message

    def retry(self, step_id: str) -> None:
        """A FAILED step gets a new logical attempt."""
        st = self._states[step_id]
        if st.status == "FAILED":
            st.status = "PENDING"
            st.attempt += 1
            st.error_code = None

    def can_skip(self, step_id: str) -> bool:
        """Whether SKIP_STEP applies (not started yet, or failed)."""
        return self._states[step_id].status in ("PENDING", "FAILED")

    def skip(self, step_id: str) -> None:
        """Mark the step SKIPPED."""
        self._states[step_id].status = "SKIPPED"

    def counts(self) -> dict[str, int]:
        """How many steps are in each status."""
        out: dict[str, int] = {}
        for st in self._states.values():
            out[st.status] = out.get(st.status, 0) + 1
        return out

    def verdict(self, running: set[str]) -> Verdict:
        """Whether the run has ended and how."""
        states = self._states
        if all(s.status in ("SUCCESS", "SKIPPED") for s in states.values()):
            return Verdict(terminal=True, status="COMPLETED")
        failed = [sid for sid in self._order if states[sid].status == "FAILED"]
        if failed:
            first = failed[0]
            if self.failure_policy == "failFast":
                return Verdict(
                    terminal=True, status="FAILED", step_id=first,
                    code=states[first].error_code, message=states[first].error_message,
                )
            if not running and not self.ready(exclude=set()):
                return Verdict(terminal=False, awaiting_operator=True)
        return Verdict(terminal=False)
