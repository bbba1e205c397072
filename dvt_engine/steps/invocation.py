"""What an engine hands a worker (StepInvocation) and what it gets back (StepOutcome)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from dvt_engine.errors import ErrorCode
from dvt_engine.identity import RunIdentity
from dvt_engine.models.base import DvtModel, Identifier
from dvt_engine.models.events import Event, EventType
from dvt_engine.models.plan import StepSpec
from dvt_engine.models.snapshot import ArtifactRef, StepError

OutcomeStatus = Literal["succeeded", "failed", "retry", "awaiting_approval", "cancelled", "refused",
                        "skipped"]


class StepInvocation(DvtModel):
    """One engine attempt of one step, as an engine hands it to a worker (JSON-serialisable)."""

    tenant_id: Identifier
    project_id: Identifier
    environment_id: Identifier
    run_id: Identifier
    plan_id: Identifier
    plan_version: Identifier
    step: StepSpec
    plan_params: dict[str, Any] = Field(default_factory=dict)
    logical_attempt_id: int = Field(default=1, ge=1)
    engine_attempt_id: int = Field(default=1, ge=1)

    @classmethod
    def for_step(
        cls,
        identity: RunIdentity,
        step: StepSpec,
        *,
        plan_params: Mapping[str, Any] | None = None,
        logical_attempt_id: int = 1,
        engine_attempt_id: int = 1,
    ) -> StepInvocation:
        """The invocation of ``step`` in the run ``identity`` (a RunHeader, for instance)."""
        return cls(
            tenant_id=identity.tenant_id,
            project_id=identity.project_id,
            environment_id=identity.environment_id,
            run_id=identity.run_id,
            plan_id=identity.plan_id,
            plan_version=identity.plan_version,
            step=step,
            plan_params=dict(plan_params or {}),
            logical_attempt_id=logical_attempt_id,
            engine_attempt_id=engine_attempt_id,
        )

    @property
    def step_id(self) -> str:
        """The step's id."""
        return self.step.step_id

    def with_engine_attempt(self, engine_attempt_id: int) -> StepInvocation:
        """The same logical attempt, run again by the engine as attempt ``engine_attempt_id``."""
        return self.model_copy(update={"engine_attempt_id": engine_attempt_id})


class StepOutcome(DvtModel):
    """What one engine attempt came to, for the engine to act on (JSON-serialisable).

    ``final`` is true when the logical attempt is decided (an event was written or found);
    ``retry`` means the engine should run attempt ``engine_attempt_id + 1`` after
    ``retry_delay_ms``; ``duplicate`` means an earlier engine attempt had already decided it.
    """

    status: OutcomeStatus
    final: bool
    step_id: str
    logical_attempt_id: int
    engine_attempt_id: int
    output: Any = None
    artifacts: tuple[ArtifactRef, ...] = ()
    error: StepError | None = None
    retry_delay_ms: int | None = None
    duplicate: bool = False
    run_seq: int | None = None

    @property
    def succeeded(self) -> bool:
        """True when the step's logical attempt succeeded."""
        return self.status == "succeeded"


def outcome_from_event(inv: StepInvocation, event: Event) -> StepOutcome:
    """The outcome a decided logical attempt had, rebuilt from its StepCompleted/StepFailed."""
    common: dict[str, Any] = {
        "final": True, "step_id": inv.step_id, "logical_attempt_id": inv.logical_attempt_id,
        "engine_attempt_id": inv.engine_attempt_id, "duplicate": True, "run_seq": event.run_seq,
    }
    payload = event.payload
    if event.event_type == EventType.STEP_COMPLETED:
        artifacts = tuple(ArtifactRef.model_validate(a) for a in payload.get("artifacts") or ())
        return StepOutcome(status="succeeded", output=payload.get("output"),
                           artifacts=artifacts, **common)
    raw = payload.get("error")
    error = StepError.model_validate(raw) if isinstance(raw, Mapping) else StepError(
        code=str(ErrorCode.STEP_FAILED), message="", retryable=False)
    status: OutcomeStatus = "cancelled" if error.code == ErrorCode.STEP_CANCELLED else "failed"
    return StepOutcome(status=status, error=error, **common)
