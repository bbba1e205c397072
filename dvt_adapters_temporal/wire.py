"""What crosses the Temporal boundary: workflow input, cursor, signals and activity messages.

Plain dataclasses of JSON types, so recorded histories replay unchanged when dvt's pydantic models
evolve. Field additions must carry defaults (old histories lack them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SIGNAL_NAME = "dvt.signal"
STATUS_QUERY = "dvt.status"
CANCEL_REASON_QUERY = "dvt.cancel_reason"

ACT_PREPARE = "dvt.prepare"
ACT_RUN_STEP = "dvt.run_step"
ACT_RUN_EVENT = "dvt.run_event"
ACT_GATE = "dvt.gate"


@dataclass
class WorkflowConfig:
    """Interpreter behaviour fixed at start (and carried across continue-as-new)."""

    task_queue: str
    kind_queues: dict[str, str] = field(default_factory=dict)
    continue_as_new_after_steps: int = 50
    continue_as_new_history_bytes: int = 1_000_000
    cancel_in_flight_on_pause: bool = False
    heartbeat_timeout_s: float = 10.0
    default_step_timeout_s: float = 86400.0
    # New fields go last: code that builds the record by position keeps its meaning.
    #: Resource class -> task queue (plan v1.3); absent in histories from before it.
    class_queues: dict[str, str] = field(default_factory=dict)


@dataclass
class Cursor:
    """The compact state carried across continue-as-new (never the plan, never step outputs)."""

    generation: int = 0
    # The shared RunInterpreter's own cursor (statuses and attempts of non-pending steps).
    interpreter: dict[str, Any] = field(default_factory=dict)
    # Steps the interpreter started that this generation left to the next: [stepId, attempt].
    pending_starts: list[list[Any]] = field(default_factory=list)
    # Approval gates waiting for a decision: [stepId, attempt].
    gates: list[list[Any]] = field(default_factory=list)
    # Durable timers still to fire: [name, fireAtEpochMs].
    timers: list[list[Any]] = field(default_factory=list)
    # Signal ids already applied, so a redelivered signal is not applied twice.
    applied_signals: list[str] = field(default_factory=list)
    # runSeq of the last applied signal decision (signals apply in decision order).
    signal_seq: int = 0


@dataclass
class RunInput:
    """Input of the interpreter workflow."""

    plan_ref: dict[str, Any]
    context: dict[str, Any]
    engine_run_ref: dict[str, Any]
    config: WorkflowConfig
    cursor: Cursor | None = None


@dataclass
class RunResult:
    """What the workflow returns when the run is terminal."""

    run_id: str
    status: str
    failure_step_id: str | None = None
    failure_code: str | None = None
    generations: int = 1


@dataclass
class SignalMessage:
    """An accepted operator signal, delivered to the workflow after its decision was recorded."""

    signal_id: str
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    actor_id: str = ""
    effective_role: str | None = None
    # runSeq of the decision record, and of the run's previous accepted signal: the workflow
    # applies signals in decision order (None: delivered by an older engine, applied at once).
    decision_seq: int | None = None
    previous_seq: int | None = None
    # For a step signal: the logical attempt it was decided for.
    attempt: int | None = None
    # Steps the log showed failed for good at the decision (step -> logical attempt): the
    # workflow applies the signal once it has been fed those failures.
    failed_steps: dict[str, int] = field(default_factory=dict)


@dataclass
class PrepareInput:
    """Fetch and validate the plan; on the first generation also write RunStarted."""

    plan_ref: dict[str, Any]
    context: dict[str, Any]
    engine_run_ref: dict[str, Any]
    first_generation: bool
    # Return the plan packed (``Prepared.plan_packed``): each workflow run's history holds it.
    packed: bool = False


@dataclass
class Prepared:
    """The validated plan (JSON), or why it was refused."""

    plan: dict[str, Any]
    refused_code: str | None = None
    refused_message: str | None = None
    # The plan's JSON, zlib-compressed and base64-encoded (``plan`` is then empty): a tenth of
    # its size in every workflow run's history (dvt_adapters_temporal.plans).
    plan_packed: str | None = None


@dataclass
class StepInput:
    """One logical attempt of a step: the shared StepInvocation as JSON (engine attempt 1)."""

    invocation: dict[str, Any]
    #: Return the step's output too (a plan v1.3 condition reads it); off, histories stay small.
    want_output: bool = False


@dataclass
class StepOutcome:
    """What the shared runner reported: succeeded, failed, cancelled, refused or
    awaiting_approval (a gate that now waits for a decision)."""

    status: str
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool = False
    output: Any = None


@dataclass
class RunEventInput:
    """A run-level event the workflow asks to append."""

    context: dict[str, Any]
    plan_ref: dict[str, Any]
    event_type: str
    payload: dict[str, Any] = field(default_factory=dict)
    discriminator: int = 1
    step_id: str | None = None
    logical_attempt_id: int = 1
    caused_by_signal_id: str | None = None
    # An engine-side StepFailed after lost workers may find the runner already settled it.
    tolerate_illegal: bool = False


@dataclass
class GateInput:
    """Resolve a waiting gate (an approval, or a wait for a custom signal)."""

    invocation: dict[str, Any]
    action: str  # "approve" | "reject" | "expire" | "cancel"
    approver: str | None = None
    comment: str | None = None
    signal_id: str | None = None
    reason: str | None = None
    #: A custom signal's data: the output of the signal wait it completes (plan v1.3).
    output: dict[str, Any] | None = None


@dataclass
class WorkflowInput:
    """One thing that happened inside the workflow, fed to the interpreter in arrival order.

    Lives here, outside the sandboxed workflow module, so it is not rebuilt for every run.
    """

    kind: str  # "settled" | "awaiting" | "timer" | "signal"
    step_id: str = ""
    attempt: int = 1
    outcome: str = ""
    error: Any = None  # dvt_engine StepError
    output: Any = None  # only for steps a plan v1.3 condition reads
    timer: str = ""
    signal: SignalMessage | None = None
