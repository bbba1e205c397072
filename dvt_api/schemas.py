"""Request and response bodies of the API (camelCase JSON; unknown request fields refused)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from dvt_engine.access import ApiRole
from dvt_engine.labels import LABELS_JSON_SCHEMA, validate_labels


def _optional_id() -> Any:
    return Field(default=None, min_length=1, max_length=200, pattern=r"^[^|\x00-\x1f\x7f]+$")


def holds_nul(value: Any) -> bool:
    """Whether any string in a JSON value (keys included) holds U+0000."""
    pending = [value]
    while pending:  # a loop, not recursion: nesting depth is the client's to choose
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


class Body(BaseModel):
    """A request body: camelCase, unknown fields refused, no U+0000 anywhere."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        # PostgreSQL text and jsonb cannot store U+0000: refuse it here, not as a store failure.
        if holds_nul(data):
            raise ValueError("text may not contain U+0000")
        return data


class Out(BaseModel):
    """A response body: camelCase."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              serialize_by_alias=True)


class PlanRefBody(Out):
    """Where a stored plan is: ``plan://sha256/<hex>`` plus its identity."""

    plan_id: str
    plan_version: str
    sha256: str
    uri: str


class PlanStored(Out):
    """The answer to storing a plan."""

    plan_ref: PlanRefBody


class PlanRefIn(Body):
    """A reference to a plan stored through ``POST /v1/plans``."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    uri: str | None = Field(default=None, max_length=2048)
    plan_id: str | None = Field(default=None, max_length=200)
    plan_version: str | None = Field(default=None, max_length=200)


class CreateRun(Body):
    """``POST /v1/runs``: a stored plan (``planRef``) or a plan document (``plan``)."""

    plan_ref: PlanRefIn | None = None
    plan: dict[str, Any] | None = None
    engine: str | None = Field(default=None, max_length=50)
    run_id: str | None = _optional_id()
    inputs: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict, json_schema_extra=LABELS_JSON_SCHEMA)

    @field_validator("labels", mode="before")
    @classmethod
    def _valid_labels(cls, value: Any) -> Any:
        # LABELS_INVALID (422) for every label rule, the same code the library raises.
        return validate_labels(value, path="body/labels")


class RunList(Out):
    """A page of runs, newest first; ``nextCursor`` is null on the last page."""

    items: list[dict[str, Any]]
    next_cursor: str | None


class EventPage(Out):
    """Stored envelopes in runSeq order; pass ``nextAfter`` as ``after`` for the next page."""

    items: list[dict[str, Any]]
    next_after: int


SignalName = Literal["PAUSE", "RESUME", "CANCEL", "RETRY_STEP", "SKIP_STEP", "APPROVE_STEP",
                     "REJECT_STEP", "APPROVE_RUN", "CUSTOM"]


class SignalBody(Body):
    """``POST /v1/runs/{runId}/signals``; the same ``signalId`` twice is one decision."""

    type: SignalName
    step_id: str | None = _optional_id()
    reason: str | None = Field(default=None, max_length=2000)
    signal_id: str | None = _optional_id()
    #: CUSTOM only: the signal name the run's plan declares, and its payload (that schema's).
    name: str | None = _optional_id()
    payload: dict[str, Any] | None = None


class SignalAnswer(Out):
    """The recorded decision of an accepted signal (a refusal is a problem+json)."""

    signal_id: str
    decision: Literal["accepted", "no_op"]
    duplicate: bool
    run_seq: int | None = None
    reason: str | None = None


class KeyCreate(Body):
    """``POST /v1/api-keys``: a key of the caller's tenant."""

    roles: list[ApiRole] = Field(min_length=1, max_length=6)
    name: str | None = Field(default=None, max_length=200)


class KeyInfo(Out):
    """A key as listed (never its secret)."""

    key_id: str
    tenant_id: str
    roles: list[ApiRole]
    name: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(KeyInfo):
    """A new key: ``key`` is shown this once."""

    key: str


class KeyList(Out):
    """The tenant's keys, oldest first."""

    items: list[KeyInfo]
