"""ExecutionPlan and PlanRef (contract §2)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from dvt_engine.models.base import DvtModel, Identifier, Sha256Hex, StrictModel
from dvt_engine.models.step_index import find_step

SUPPORTED_SCHEMA_VERSIONS: tuple[str, ...] = ("v1.0", "v1.1", "v1.2", "v1.3")
BUILTIN_STEP_KINDS: tuple[str, ...] = ("noop", "sleep", "echo", "fail", "approval")
DEFAULT_OPERATOR_TIMEOUT_MS = 24 * 60 * 60 * 1000

FallbackBehavior = Literal["reject", "emulate", "degrade"]
FailurePolicy = Literal["failFast", "awaitOperator"]
#: What a SKIPPED dependency means for its dependants (v1.3): ``satisfy`` (the default, as before
#: v1.3) lets them run; ``cascade`` skips a dependant whose join can no longer be met otherwise.
SkipRule = Literal["satisfy", "cascade"]
JoinMode = Literal["all", "any", "quorum"]
#: What an ``any``/``quorum`` join does to its unsettled dependencies once it is met: let them
#: run (``finish``), skip the ones not started (``skip``), or also stop and skip the running
#: ones (``cancel``, docs/plans.md).
JoinLosers = Literal["finish", "skip", "cancel"]


class RetryPolicy(StrictModel):
    """Engine retries of one logical attempt, with exponential backoff."""

    max_attempts: int = Field(default=1, ge=1, le=100)
    initial_interval_ms: int = Field(default=1000, ge=0, le=86_400_000)
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=100.0)
    max_interval_ms: int = Field(default=60_000, ge=0, le=86_400_000)
    non_retryable_error_codes: tuple[str, ...] = ()

    def delay_before_attempt_ms(self, engine_attempt: int) -> int:
        """Backoff before engine attempt n (>= 2): initial x coefficient^(n-2), capped."""
        if engine_attempt < 2:
            return 0
        delay = self.initial_interval_ms * self.backoff_coefficient ** (engine_attempt - 2)
        return int(min(delay, self.max_interval_ms))


class CostHint(StrictModel):
    """A planner's estimate of what a step costs, in host-defined units."""

    units: float = Field(ge=0)


class JoinSpec(StrictModel):
    """How many of a step's dependencies must succeed before it starts (v1.3)."""

    mode: JoinMode = "all"
    #: quorum only: how many dependencies must be SUCCESS (or SKIPPED under ``satisfy``).
    count: int | None = Field(default=None, ge=1)
    #: any/quorum: what happens to the dependencies not settled when the join is met.
    losers: JoinLosers = "finish"


#: Bounds of a step's ``priority`` (v1.3): higher starts first among ready steps, default 0.
MIN_PRIORITY = -1000
MAX_PRIORITY = 1000


class ResourceClassSpec(StrictModel):
    """A plan's resource class (v1.3): steps that name it share its limit and its routing."""

    #: At most this many steps of the class run at once; absent means no class limit.
    max_parallel: int | None = Field(default=None, ge=1, le=100_000)
    description: str | None = Field(default=None, max_length=2000)


#: The largest ``forEach.maxItems`` a plan may declare (each item becomes a step of the run).
MAX_FOR_EACH_ITEMS = 1000


class ForEachSpec(StrictModel):
    """Dynamic fan-out (v1.3): one child step per item of a list known at run time.

    The list is ``steps.<step>.output.<path>`` of an earlier step, or the run's param
    ``<param>`` (``path`` reads inside it too); exactly one of ``step`` and ``param``.
    """

    step: Identifier | None = None
    param: str | None = Field(default=None, min_length=1, max_length=200)
    #: Dotted keys inside the step's output or the param (empty: the value itself).
    path: str | None = Field(default=None, min_length=1, max_length=500)
    #: Required (validation refuses a plan without it); a longer list fails the step.
    max_items: int | None = Field(default=None, ge=0)
    #: A CEL condition per item, over ``params``, ``steps``, ``item`` and ``index``.
    when: str | None = Field(default=None, min_length=1, max_length=2000)


#: Largest custom signal payload schema a plan may declare, as canonical JSON bytes.
MAX_SIGNAL_SCHEMA_BYTES = 16 * 1024
#: Most custom signal types one plan may declare.
MAX_SIGNAL_TYPES = 50
SignalRole = Literal["admin", "engineer", "operator", "approver"]
WaitTimeoutAction = Literal["fail", "skip"]


class SignalDeclaration(StrictModel):
    """A custom signal type a plan accepts (v1.3): its payload schema and who may send it."""

    #: A Draft 2020-12 JSON Schema of the payload (checked at validation; absent: any object).
    payload: dict[str, Any] | None = None
    #: Roles that may send it (the ordered roles imply the ones below them); absent: operator.
    roles: tuple[SignalRole, ...] | None = Field(default=None, min_length=1, max_length=4)
    description: str | None = Field(default=None, max_length=2000)

    @property
    def allowed_roles(self) -> tuple[str, ...]:
        """The roles that may send the signal (operator when the plan names none)."""
        return self.roles or ("operator",)


class WaitForSignalSpec(StrictModel):
    """A step that waits for a custom signal (v1.3); its payload becomes the step's output."""

    name: Identifier
    #: How long the step waits (absent: until the run ends or an operator steps in).
    timeout_ms: int | None = Field(default=None, ge=1)
    on_timeout: WaitTimeoutAction = "fail"


class StepSpec(StrictModel):
    """One step of a plan: a kind, its params, and the steps it waits for."""

    step_id: Identifier
    kind: Identifier
    depends_on: tuple[Identifier, ...] = ()
    params: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy | None = None
    timeout_ms: int | None = Field(default=None, ge=1)
    cost_hint: CostHint | None = None
    task_queue: Identifier | None = None
    description: str | None = Field(default=None, max_length=2000)
    concurrency_group: Identifier | None = None
    #: ``"all"`` / ``"any"`` or a JoinSpec object; absent means all.
    join: JoinSpec | JoinMode | None = None
    #: A CEL expression over ``params``, ``inputs`` and ``steps``; false skips the step.
    when: str | None = Field(default=None, min_length=1, max_length=2000)
    #: Expand into one child step per item of a list (v1.3, dvt_engine/rules/foreach.py).
    for_each: ForEachSpec | None = None
    #: A class of ``metadata.resourceClasses`` (v1.3): its limit, its worker pool, its price.
    resource_class: Identifier | None = None
    #: Among ready steps a higher priority starts first, then plan order (v1.3; absent is 0).
    priority: int | None = Field(default=None, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    #: Wait for a custom signal instead of running a handler (v1.3, docs/plans.md).
    wait_for_signal: WaitForSignalSpec | None = None

    @property
    def join_spec(self) -> JoinSpec:
        """The step's join as a JoinSpec (a string is shorthand for its mode)."""
        if self.join is None:
            return JoinSpec()
        if isinstance(self.join, str):
            return JoinSpec(mode=self.join)
        return self.join

    @property
    def max_attempts(self) -> int:
        """Engine attempts allowed for one logical attempt."""
        return self.retry.max_attempts if self.retry else 1


class PlanMetadata(StrictModel):
    """Who the plan is, which schema it speaks, and how it wants to run."""

    plan_id: Identifier
    plan_version: Identifier
    # Any string here, so an unknown version is reported as such rather than as a schema error.
    schema_version: str = Field(min_length=1, max_length=20)
    requires_capabilities: tuple[str, ...] = ()
    fallback_behavior: FallbackBehavior = "reject"
    target_adapter: str = "any"
    failure_policy: FailurePolicy = "failFast"
    requires_approval: bool = False
    operator_timeout_ms: int = Field(default=DEFAULT_OPERATOR_TIMEOUT_MS, ge=1)
    #: At most this many steps run at once (v1.3); absent means no limit.
    max_parallel: int | None = Field(default=None, ge=1, le=100_000)
    #: At most N running steps per ``concurrencyGroup`` (v1.3).
    concurrency_groups: dict[Identifier, Annotated[int, Field(ge=1)]] | None = None
    #: Absent means ``satisfy`` (None keeps plans without the field dumping as before v1.3).
    skip_rule: SkipRule | None = None
    #: Resource classes steps may name (v1.3), each with an optional running-step limit.
    resource_classes: dict[Identifier, ResourceClassSpec] | None = None
    #: Custom signal types the run accepts (v1.3), by name.
    signals: dict[Identifier, SignalDeclaration] | None = Field(default=None,
                                                                max_length=MAX_SIGNAL_TYPES)

    @property
    def group_limits(self) -> dict[str, int]:
        """Each concurrency group's limit (empty when the plan sets none)."""
        return dict(self.concurrency_groups or {})

    @property
    def class_limits(self) -> dict[str, int]:
        """Each resource class's ``maxParallel`` (classes without one are left out)."""
        return {name: spec.max_parallel for name, spec in (self.resource_classes or {}).items()
                if spec.max_parallel is not None}

    @property
    def cascades_skips(self) -> bool:
        """True when a SKIPPED dependency does not satisfy its dependants (``cascade``)."""
        return self.skip_rule == "cascade"
    description: str | None = Field(default=None, max_length=2000)


class ExecutionPlan(StrictModel):
    """A run's description: a DAG of typed steps."""

    metadata: PlanMetadata
    params: dict[str, Any] = Field(default_factory=dict)
    steps: tuple[StepSpec, ...] = Field(min_length=1)

    def step(self, step_id: str) -> StepSpec:
        """The step with this id (KeyError when absent)."""
        spec = find_step(self.steps, step_id)
        if spec is None:
            raise KeyError(step_id)
        return spec

    @property
    def step_ids(self) -> tuple[str, ...]:
        """Step ids in plan order."""
        return tuple(s.step_id for s in self.steps)


class PlanRef(DvtModel):
    """How a plan is passed to an engine: by reference, never inline."""

    uri: str = Field(min_length=1, max_length=2048)
    sha256: Sha256Hex
    schema_version: str = Field(min_length=1, max_length=20)
    plan_id: Identifier
    plan_version: Identifier
    size_bytes: int | None = Field(default=None, ge=0)
