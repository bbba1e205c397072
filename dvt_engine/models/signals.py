"""Operator signals (contract §6): requests, payloads and decisions."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from dvt_engine.errors import SignalInvalidPayload
from dvt_engine.models.base import DvtModel, Identifier, StrictModel


class SignalType(StrEnum):
    """What an operator can ask of a run."""

    PAUSE = "PAUSE"
    RESUME = "RESUME"
    CANCEL = "CANCEL"
    RETRY_STEP = "RETRY_STEP"
    SKIP_STEP = "SKIP_STEP"
    APPROVE_STEP = "APPROVE_STEP"
    RETRY_RUN = "RETRY_RUN"
    APPROVE_RUN = "APPROVE_RUN"
    #: A signal type the run's plan declares (v1.3); the payload names it.
    CUSTOM = "CUSTOM"


class Role(StrEnum):
    """Roles: admin > engineer > operator are ordered; approver stands apart."""

    ADMIN = "admin"
    ENGINEER = "engineer"
    OPERATOR = "operator"
    APPROVER = "approver"


# Bounds on every collection a client sends, checked when the request is built, so an
# oversized signal is refused before it is rate limited, authorized or recorded.
MAX_ACTOR_ROLES = 8  # four roles exist; a longer list can only repeat them
MAX_PAYLOAD_ITEMS = 64  # keys and list items of a payload, counted at every depth


def _bounded_payload(value: dict[str, Any]) -> dict[str, Any]:
    count = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            count += len(item)
            stack.extend(item)
        if count > MAX_PAYLOAD_ITEMS:
            raise ValueError(f"a payload holds at most {MAX_PAYLOAD_ITEMS} keys and list items")
    return value


BoundedPayload = Annotated[dict[str, Any], AfterValidator(_bounded_payload)]


class Actor(StrictModel):
    """Who sends a signal, with the roles the host vouches for."""

    id: Identifier
    roles: tuple[Role, ...] = Field(default=(), max_length=MAX_ACTOR_ROLES)


Reason = str


class PausePayload(StrictModel):
    """PAUSE: stop scheduling new steps."""

    reason: str | None = Field(default=None, max_length=2000)


class ResumePayload(StrictModel):
    """RESUME: schedule again."""


class CancelPayload(StrictModel):
    """CANCEL: cooperative stop of the run."""

    reason: str | None = Field(default=None, max_length=2000)


class RetryStepPayload(StrictModel):
    """RETRY_STEP: a FAILED step gets a new logical attempt."""

    step_id: Identifier
    reason: str | None = Field(default=None, max_length=2000)


class SkipStepPayload(StrictModel):
    """SKIP_STEP: a step that has not run (or failed finally) becomes SKIPPED."""

    step_id: Identifier
    reason: str | None = Field(default=None, max_length=2000)


class ApproveStepPayload(StrictModel):
    """APPROVE_STEP: resolve an approval gate."""

    step_id: Identifier
    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=2000)


class RetryRunPayload(StrictModel):
    """RETRY_RUN: start a new run of the same plan."""

    reason: str | None = Field(default=None, max_length=2000)
    new_run_id: Identifier | None = None


class ApproveRunPayload(StrictModel):
    """APPROVE_RUN: let a run whose plan requires approval start (or reject it)."""

    decision: Literal["approve", "reject"] = "approve"
    comment: str | None = Field(default=None, max_length=2000)


class CustomSignalPayload(StrictModel):
    """CUSTOM: a signal type the plan declares, with its data (checked against its schema).

    ``step_id`` is filled in by the signal service: the waiting step the signal completes.
    """

    name: Identifier
    data: BoundedPayload = Field(default_factory=dict)
    step_id: Identifier | None = None


SIGNAL_PAYLOAD_MODELS: dict[SignalType, type[StrictModel]] = {
    SignalType.PAUSE: PausePayload,
    SignalType.RESUME: ResumePayload,
    SignalType.CANCEL: CancelPayload,
    SignalType.RETRY_STEP: RetryStepPayload,
    SignalType.SKIP_STEP: SkipStepPayload,
    SignalType.APPROVE_STEP: ApproveStepPayload,
    SignalType.RETRY_RUN: RetryRunPayload,
    SignalType.APPROVE_RUN: ApproveRunPayload,
    SignalType.CUSTOM: CustomSignalPayload,
}


SignalPayload = (
    PausePayload | ResumePayload | CancelPayload | RetryStepPayload | SkipStepPayload
    | ApproveStepPayload | RetryRunPayload | ApproveRunPayload | CustomSignalPayload
)
"""Any typed signal payload; its class says which signal it is."""

PAYLOAD_SIGNAL_TYPES: dict[type[StrictModel], SignalType] = {
    model: signal_type for signal_type, model in SIGNAL_PAYLOAD_MODELS.items()
}


def signal_type_of(payload: StrictModel) -> SignalType:
    """The signal type a typed payload stands for (PausePayload -> PAUSE, ...)."""
    try:
        return PAYLOAD_SIGNAL_TYPES[type(payload)]
    except KeyError:
        raise SignalInvalidPayload(
            f"{type(payload).__name__} is not a signal payload model",
            details={"errors": [{"path": "payload", "message": "not a signal payload model"}]},
        ) from None


def payload_dict(payload: StrictModel) -> dict[str, Any]:
    """A typed payload as the camelCase JSON object requests and records carry."""
    return payload.model_dump(mode="json", by_alias=True, exclude_none=True)


class SignalRequest(StrictModel):
    """A signal as a client sends it. ``signal_id`` is the client's idempotency key."""

    # The docstring is the JSON Schema's description, so the rest is said here: ``payload`` is
    # the JSON object; a typed payload model (PausePayload(...)) is accepted too, turned into
    # that object, and may stand in for ``type``. ``SignalRequest.of`` builds one typed.

    signal_id: Identifier
    type: SignalType
    tenant_id: Identifier
    run_id: Identifier
    payload: BoundedPayload = Field(default_factory=dict)
    actor: Actor

    @model_validator(mode="before")
    @classmethod
    def _typed_payload(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("payload"), StrictModel):
            return data
        payload: StrictModel = data["payload"]
        expected = signal_type_of(payload)
        given = data.get("type")
        if given is not None and str(given) != str(expected):
            raise SignalInvalidPayload(
                f"a {type(payload).__name__} cannot be the payload of {given}",
                details={"signalType": str(given),
                         "errors": [{"path": "payload", "message": f"is a {expected} payload"}]},
            )
        return {**data, "type": expected, "payload": payload_dict(payload)}

    @classmethod
    def of(
        cls,
        payload: SignalPayload,
        *,
        signal_id: str,
        tenant_id: str,
        run_id: str,
        actor: Actor,
    ) -> SignalRequest:
        """A request whose type is the payload model's signal type."""
        return cls(signal_id=signal_id, type=signal_type_of(payload), tenant_id=tenant_id,
                   run_id=run_id, payload=payload_dict(payload), actor=actor)


class AcceptedSignal(DvtModel):
    """A newly accepted signal the engine must now apply; JSON-safe for engine boundaries."""

    signal_id: str
    type: SignalType
    tenant_id: str
    run_id: str
    payload: dict[str, Any]
    actor: Actor
    effective_role: Role | None = None
    decision_run_seq: int
    #: For a step signal: the logical attempt it was decided for (it applies to no other).
    logical_attempt_id: int | None = None
    #: The runSeq of the run's previous accepted signal an engine applies (decision order).
    previous_signal_seq: int | None = None
    #: Steps the log showed failed for good when the signal was decided (step -> logical
    #: attempt): an engine that learns outcomes after the log does applies the signal only
    #: once it has seen them (``RunInterpreter.unseen_failure``). Not part of the record.
    failed_steps: dict[str, int] = Field(default_factory=dict)

    @property
    def step_id(self) -> str | None:
        """The step a step signal names (RETRY_STEP, SKIP_STEP, APPROVE_STEP, CUSTOM), else None."""
        value = self.payload.get("stepId")
        return value if isinstance(value, str) else None

    def typed_payload(self) -> StrictModel:
        """The payload as its signal's model (PausePayload, RetryStepPayload, ...)."""
        return SIGNAL_PAYLOAD_MODELS[self.type].model_validate(self.payload)


class SignalDecision(DvtModel):
    """The recorded answer to a signal; a repeated signalId gets the first decision again."""

    signal_id: str
    type: SignalType
    run_id: str
    accepted: bool
    duplicate: bool = False
    no_op: bool = False
    effective_role: Role | None = None
    error_code: str | None = None
    message: str | None = None
    run_seq: int | None = None
    new_run_id: str | None = None
