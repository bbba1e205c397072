"""RunSnapshot and StepSnapshot: the projection of a run's event log (contract §5.4)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from dvt_engine.models.base import DvtModel
from dvt_engine.models.run import RunStatus, RunSubstatus, StepStatus, StepSubstatus


class ArtifactRef(DvtModel):
    """A reference to data a step produced; the data itself never enters an event."""

    uri: str = Field(min_length=1, max_length=2048)
    kind: str = Field(min_length=1, max_length=200)
    sha256: str | None = None
    size_bytes: int | None = Field(default=None, ge=0)
    media_type: str | None = Field(default=None, max_length=200)


class StepError(DvtModel):
    """Why a step attempt failed."""

    code: str
    message: str
    retryable: bool = False


class Cost(DvtModel):
    """What a step or run cost: host units, and wall time (time is dropped from parity)."""

    units: float | None = None
    duration_ms: int | None = None


class StepAttempt(DvtModel):
    """One logical attempt of a step, kept forever in the snapshot's history."""

    logical_attempt_id: int
    status: StepStatus
    error: StepError | None = None


class StepSnapshot(DvtModel):
    """The projected state of one step."""

    step_id: str
    status: StepStatus = StepStatus.PENDING
    substatus: StepSubstatus | None = None
    logical_attempt_id: int = 1
    engine_attempt_id: int | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    output: Any = None
    artifacts: tuple[ArtifactRef, ...] = ()
    cost: Cost | None = None
    error: StepError | None = None
    skip_reason: str | None = None
    attempts: tuple[StepAttempt, ...] = ()


class RunFailure(DvtModel):
    """The root cause of a FAILED run."""

    step_id: str | None = None
    code: str
    message: str


class RunSnapshot(DvtModel):
    """The projected state of one run."""

    run_id: str
    tenant_id: str
    project_id: str
    environment_id: str
    plan_id: str
    plan_version: str
    status: RunStatus = RunStatus.PENDING
    substatus: RunSubstatus | None = None
    last_event_seq: int = 0
    engine_run_ref: dict[str, Any] | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    steps: tuple[StepSnapshot, ...] = ()
    artifacts: tuple[ArtifactRef, ...] = ()
    cost: Cost = Field(default_factory=Cost)
    failure: RunFailure | None = None
    pause_count: int = 0
    original_run_id: str | None = None

    def step(self, step_id: str) -> StepSnapshot:
        """The snapshot of one step (KeyError when absent)."""
        for s in self.steps:
            if s.step_id == step_id:
                return s
        raise KeyError(step_id)
