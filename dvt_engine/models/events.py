"""The event envelope and the payload of every event type (contract §4)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from dvt_engine.models.base import DvtModel, Identifier
from dvt_engine.models.signals import Actor, Role, SignalType
from dvt_engine.models.snapshot import ArtifactRef, Cost, StepError


class EventType(StrEnum):
    """The event catalog (contract §4.1)."""

    RUN_APPROVED = "RunApproved"
    RUN_STARTED = "RunStarted"
    STEP_STARTED = "StepStarted"
    STEP_COMPLETED = "StepCompleted"
    STEP_FAILED = "StepFailed"
    STEP_SKIPPED = "StepSkipped"
    STEP_AWAITING_APPROVAL = "StepAwaitingApproval"
    SIGNAL_ACCEPTED = "SignalAccepted"
    SIGNAL_REJECTED = "SignalRejected"
    RUN_PAUSED = "RunPaused"
    RUN_RESUMED = "RunResumed"
    RUN_COMPLETED = "RunCompleted"
    RUN_FAILED = "RunFailed"
    RUN_CANCELLED = "RunCancelled"

    @property
    def is_step_event(self) -> bool:
        """Step events carry a stepId."""
        return self.value.startswith("Step")


# The events that give a run its terminal status (followers stop at one).
TERMINAL_RUN_EVENTS = frozenset({EventType.RUN_COMPLETED, EventType.RUN_FAILED,
                                 EventType.RUN_CANCELLED})


EmittedBy = Literal["engine", "step-runner", "operator", "store", "cli"]


class Event(DvtModel):
    """One entry of a run's log. ``run_seq`` and ``persisted_at`` are set by the store only."""

    event_id: str = Field(min_length=1, max_length=64)
    # Open string, not EventType: a newer producer's event must still be stored and skipped.
    event_type: Identifier
    tenant_id: Identifier
    project_id: Identifier
    environment_id: Identifier
    run_id: Identifier
    step_id: Identifier | None = None
    plan_id: Identifier
    plan_version: Identifier
    logical_attempt_id: int = Field(default=1, ge=1)
    engine_attempt_id: int = Field(default=1, ge=1)
    idempotency_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    emitted_at: datetime
    emitted_by: str = Field(min_length=1, max_length=64)
    occurred_at: datetime | None = None
    caused_by_signal_id: Identifier | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    run_seq: int | None = Field(default=None, ge=1)
    persisted_at: datetime | None = None


class AppendResult(DvtModel):
    """What the store answers to an append: the event's place in the log."""

    run_seq: int
    persisted_at: datetime
    event_id: str
    duplicate: bool = False


# Payloads. Producers build them with these models; the projector reads them leniently.


class RunApprovedPayload(DvtModel):
    """RunApproved."""

    approver: str
    comment: str | None = None


class RunStartedPayload(DvtModel):
    """RunStarted: which engine accepted the run, and its reference there."""

    engine: str
    engine_run_ref: dict[str, Any] | None = None


class StepStartedPayload(DvtModel):
    """StepStarted."""

    kind: str
    #: The step's resource class (plan v1.3), absent when it has none; metering prices by it.
    resource_class: str | None = None


class StepCompletedPayload(DvtModel):
    """StepCompleted: small JSON output plus artifact references."""

    output: Any = None
    artifacts: tuple[ArtifactRef, ...] = ()
    cost: Cost | None = None


class StepFailedPayload(DvtModel):
    """StepFailed: the final error of a logical attempt."""

    error: StepError


class StepSkippedPayload(DvtModel):
    """StepSkipped."""

    reason: str


class StepAwaitingApprovalPayload(DvtModel):
    """StepAwaitingApproval: an approval gate, or a wait for the custom signal ``signal``."""

    timeout_ms: int | None = None
    signal: str | None = None


class SignalBasis(DvtModel):
    """The state an accepted signal was decided against (the run's desired state then).

    Run signals record the run's status; step signals the step's status, substatus and
    logical attempt. An accepted signal is still to be applied while its basis holds.
    """

    run_status: str | None = None
    step_status: str | None = None
    step_substatus: str | None = None
    logical_attempt_id: int | None = None


class SignalDecisionPayload(DvtModel):
    """SignalAccepted / SignalRejected: the audit record of a decision."""

    signal_id: str
    signal_type: SignalType
    step_id: str | None = None
    actor: Actor
    effective_role: Role | None = None
    reason: str | None = None
    error_code: str | None = None
    message: str | None = None
    no_op: bool = False
    request: dict[str, Any] = Field(default_factory=dict)
    basis: SignalBasis | None = None


class RunPausedPayload(DvtModel):
    """RunPaused: the pause ordinal is the key discriminator."""

    ordinal: int = Field(ge=1)
    reason: str | None = None


class RunResumedPayload(DvtModel):
    """RunResumed: ends pause number ``ordinal``."""

    ordinal: int = Field(ge=1)


class RunCompletedPayload(DvtModel):
    """RunCompleted."""

    succeeded: int = 0
    skipped: int = 0


class RunFailedPayload(DvtModel):
    """RunFailed: the root cause."""

    step_id: str | None = None
    code: str
    message: str


class RunCancelledPayload(DvtModel):
    """RunCancelled."""

    reason: str | None = None


PAYLOAD_MODELS: dict[EventType, type[DvtModel]] = {
    EventType.RUN_APPROVED: RunApprovedPayload,
    EventType.RUN_STARTED: RunStartedPayload,
    EventType.STEP_STARTED: StepStartedPayload,
    EventType.STEP_COMPLETED: StepCompletedPayload,
    EventType.STEP_FAILED: StepFailedPayload,
    EventType.STEP_SKIPPED: StepSkippedPayload,
    EventType.STEP_AWAITING_APPROVAL: StepAwaitingApprovalPayload,
    EventType.SIGNAL_ACCEPTED: SignalDecisionPayload,
    EventType.SIGNAL_REJECTED: SignalDecisionPayload,
    EventType.RUN_PAUSED: RunPausedPayload,
    EventType.RUN_RESUMED: RunResumedPayload,
    EventType.RUN_COMPLETED: RunCompletedPayload,
    EventType.RUN_FAILED: RunFailedPayload,
    EventType.RUN_CANCELLED: RunCancelledPayload,
}
