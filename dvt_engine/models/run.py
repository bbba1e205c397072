"""Runs: who owns them, how engines refer to them, and their status vocabulary."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from dvt_engine.labels import LABELS_JSON_SCHEMA, validate_labels
from dvt_engine.models.base import DvtModel, Identifier, Sha256Hex, StrictModel
from dvt_engine.models.plan import ExecutionPlan, FailurePolicy, PlanRef


class RunStatus(StrEnum):
    """Run status (contract §3.1)."""

    PENDING = "PENDING"
    APPROVED = "APPROVED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    # Accepted but waiting in its tenant's admission queue: not registered, no events yet.
    # A run leaves QUEUED for PENDING when it is started, or for CANCELLED (docs/limits.md).
    QUEUED = "QUEUED"

    @property
    def is_terminal(self) -> bool:
        """COMPLETED, FAILED and CANCELLED accept nothing more."""
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class RunSubstatus(StrEnum):
    """Refinements of RUNNING and PAUSED."""

    DRAINING = "DRAINING"
    AWAITING_OPERATOR = "AWAITING_OPERATOR"


class StepStatus(StrEnum):
    """Status of a step's current logical attempt (contract §3.2)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"

    @property
    def satisfies_dependency(self) -> bool:
        """A dependency is satisfied when the step is SUCCESS or SKIPPED."""
        return self in (StepStatus.SUCCESS, StepStatus.SKIPPED)


class StepSubstatus(StrEnum):
    """Refinement of a RUNNING step."""

    AWAITING_APPROVAL = "AWAITING_APPROVAL"


class RunContext(StrictModel):
    """Who starts a run and why; passed to start_run."""

    tenant_id: Identifier
    project_id: Identifier
    environment_id: Identifier
    run_id: Identifier
    run_request_id: Identifier | None = None
    triggered_by: str | None = Field(default=None, max_length=200)
    original_run_id: Identifier | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    #: Caller-chosen metadata to find the run by (dvt_engine.labels has the rules).
    labels: dict[str, str] = Field(default_factory=dict, json_schema_extra=LABELS_JSON_SCHEMA)

    @field_validator("labels", mode="before")
    @classmethod
    def _valid_labels(cls, value: Any) -> Any:
        # LABELS_INVALID itself (not a pydantic error), so every caller sees the same code.
        return validate_labels(value)


class TemporalRunRef(DvtModel):
    """A run on Temporal: its workflow execution."""

    provider: Literal["temporal"] = "temporal"
    namespace: str
    workflow_id: str
    run_id: str | None = None
    task_queue: str


class ConductorRunRef(DvtModel):
    """A run on Conductor: its workflow instance."""

    provider: Literal["conductor"] = "conductor"
    server_url: str
    workflow_id: str
    run_id: str | None = None


class ReferenceRunRef(DvtModel):
    """A run on the in-process reference engine."""

    provider: Literal["reference"] = "reference"
    instance_id: str
    run_id: str
    #: Run ids are unique per tenant only; references recorded before it existed have none.
    tenant_id: str | None = None


EngineRunRef = Annotated[
    TemporalRunRef | ConductorRunRef | ReferenceRunRef, Field(discriminator="provider")
]


class StepOutline(DvtModel):
    """What the projector needs of a step: its id, kind and dependencies."""

    step_id: Identifier
    kind: Identifier
    depends_on: tuple[Identifier, ...] = ()


class RunHeader(DvtModel):
    """A run's registration: identity, plan reference and outline. Written once, never changed."""

    tenant_id: Identifier
    project_id: Identifier
    environment_id: Identifier
    run_id: Identifier
    plan_id: Identifier
    plan_version: Identifier
    plan_ref: PlanRef
    steps: tuple[StepOutline, ...]
    failure_policy: FailurePolicy = "failFast"
    requires_approval: bool = False
    engine: str
    run_request_key: Sha256Hex
    run_request_id: Identifier | None = None
    original_run_id: Identifier | None = None
    triggered_by: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    created_at: datetime

    @classmethod
    def for_plan(
        cls,
        *,
        plan: ExecutionPlan,
        plan_ref: PlanRef,
        context: RunContext,
        engine: str,
        run_request_key: str,
        created_at: datetime,
    ) -> RunHeader:
        """Build the header of a new run of ``plan``."""
        return cls(
            tenant_id=context.tenant_id,
            project_id=context.project_id,
            environment_id=context.environment_id,
            run_id=context.run_id,
            plan_id=plan.metadata.plan_id,
            plan_version=plan.metadata.plan_version,
            plan_ref=plan_ref,
            steps=tuple(
                StepOutline(step_id=s.step_id, kind=s.kind, depends_on=s.depends_on)
                for s in plan.steps
            ),
            failure_policy=plan.metadata.failure_policy,
            requires_approval=plan.metadata.requires_approval,
            engine=engine,
            run_request_key=run_request_key,
            run_request_id=context.run_request_id,
            original_run_id=context.original_run_id,
            triggered_by=context.triggered_by,
            params=context.params,
            labels=context.labels,
            created_at=created_at,
        )


class RunStatusSnapshot(DvtModel):
    """What an engine says about a run, for diagnosis; the store holds the truth."""

    run_id: str
    status: RunStatus
    substatus: RunSubstatus | None = None
    message: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


class RunSummary(DvtModel):
    """One row of the latest-status index, as returned by list_runs."""

    run_id: str
    tenant_id: str
    project_id: str
    environment_id: str
    plan_id: str
    plan_version: str
    engine: str
    status: RunStatus
    substatus: RunSubstatus | None = None
    last_event_seq: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
