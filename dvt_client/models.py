"""Typed bodies of the dvt HTTP API (camelCase on the wire, snake_case in Python).

Hand-written after docs/openapi.json: the document leaves runs and events as open objects, so
these models type them after the contract's snapshot and envelope. Unknown fields are kept
(``extra="allow"``): a newer service may add some. tests/test_client_models.py checks every
model named after a component of openapi.json against that component.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

RunStatusName = Literal["PENDING", "APPROVED", "RUNNING", "PAUSED", "COMPLETED", "FAILED",
                        "CANCELLED", "QUEUED"]
TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
TERMINAL_EVENTS = frozenset({"RunCompleted", "RunFailed", "RunCancelled"})
SignalType = Literal["PAUSE", "RESUME", "CANCEL", "RETRY_STEP", "SKIP_STEP", "APPROVE_STEP",
                     "REJECT_STEP", "APPROVE_RUN", "CUSTOM"]


class Model(BaseModel):
    """A body of the API: camelCase aliases, unknown fields kept."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow",
                              frozen=True)


class ProblemItem(Model):
    """One broken rule of a refused request."""

    path: str
    message: str


class Problem(Model):
    """RFC 9457 problem details with the stable dvt error code."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str
    errors: list[ProblemItem] = Field(default_factory=list)


class StepError(Model):
    """Why a step attempt failed."""

    code: str
    message: str
    retryable: bool = False


class StepSnapshot(Model):
    """The projected state of one step."""

    step_id: str
    status: str
    substatus: str | None = None
    logical_attempt_id: int = 1
    started_at: datetime | None = None
    completed_at: datetime | None = None
    output: Any = None
    error: StepError | None = None
    skip_reason: str | None = None


class RunFailure(Model):
    """The root cause of a FAILED run."""

    step_id: str | None = None
    code: str
    message: str


class Run(Model):
    """A run's snapshot as the service answers it (``GET /v1/runs/{runId}``)."""

    run_id: str
    tenant_id: str
    project_id: str
    environment_id: str
    plan_id: str
    plan_version: str
    status: RunStatusName
    substatus: str | None = None
    last_event_seq: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    steps: list[StepSnapshot] = Field(default_factory=list)
    failure: RunFailure | None = None
    pause_count: int = 0
    engine: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    checksum: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the run has finished (COMPLETED, FAILED or CANCELLED)."""
        return self.status in TERMINAL_STATUSES

    def step(self, step_id: str) -> StepSnapshot:
        """One step's snapshot (KeyError when the plan has no such step)."""
        for s in self.steps:
            if s.step_id == step_id:
                return s
        raise KeyError(step_id)


class RunEvent(Model):
    """One stored event of a run's log (the envelope, with its runSeq)."""

    event_id: str
    event_type: str
    tenant_id: str
    run_id: str
    step_id: str | None = None
    plan_id: str
    plan_version: str
    run_seq: int
    emitted_at: datetime
    persisted_at: datetime | None = None
    occurred_at: datetime | None = None
    caused_by_signal_id: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        """Whether this event ends the run."""
        return self.event_type in TERMINAL_EVENTS


class RunList(Model):
    """A page of runs, newest first; ``next_cursor`` is None on the last page."""

    items: list[Run]
    next_cursor: str | None


class EventPage(Model):
    """Stored events in runSeq order; ``next_after`` is the ``after`` of the next page."""

    items: list[RunEvent]
    next_after: int


class SignalAnswer(Model):
    """The recorded decision of an accepted signal (a refusal raises instead)."""

    signal_id: str
    decision: Literal["accepted", "no_op"]
    duplicate: bool
    run_seq: int | None = None
    reason: str | None = None


class PlanRef(Model):
    """Where a stored plan is: its digest, identity and ``plan://sha256/...`` address."""

    plan_id: str
    plan_version: str
    sha256: str
    uri: str


class ValidationIssue(Model):
    """One issue of a validation report."""

    code: str
    message: str
    severity: str | None = None


class ValidationReport(Model):
    """Whether a plan is valid for an engine, and why not."""

    ok: bool
    engine: str | None = None
    plan_id: str | None = None
    plan_version: str | None = None
    issues: list[ValidationIssue] = Field(default_factory=list)


class KeyInfo(Model):
    """An API key as listed (never its secret)."""

    key_id: str
    tenant_id: str
    roles: list[str]
    name: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(KeyInfo):
    """A new key: ``key`` is shown this once."""

    key: str
