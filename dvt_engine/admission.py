"""Tenant limits and admission: the rules, the port, and the dispatcher of queued runs.

Before a run is registered its tenant's limits are checked and a slot is taken in one atomic
step of an ``AdmissionStore`` (memory twin: dvt_engine.stores.memory_admission; PostgreSQL:
dvt_statestore_pg.admission). A slot is a run of the tenant whose latest status is not terminal
(read from the store's latest-status index), or a reservation made by admission for a run not
registered yet, which lapses after ``RESERVATION_LEASE_S``. So a slot frees in the very
transaction that appends the run's terminal event, however the run ends, and a process that
dies between admission and registration cannot hold a slot for longer than the lease.

Over a limit a tenant's run is refused (RATE_LIMITED, or QUOTA_EXCEEDED for a plan larger than
the tenant may run) or, with ``overflow: queue``, accepted as QUEUED in a durable FIFO per
tenant that the ``Dispatcher`` drains, round-robin across tenants, as slots free.

The module is a little over 500 lines: the limits, the port and the dispatcher share their
types and are read together; splitting them would leave each half without its rules.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import math
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, SettingsConfigDict

from dvt_engine.errors import DvtError, LimitsInvalid, QuotaExceeded, RateLimited
from dvt_engine.idempotency import run_request_key
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunContext, RunStatus
from dvt_engine.ports import RunStateStore, WorkflowEngine
from dvt_engine.waiting import cancel_and_wait, settles_within

log = logging.getLogger("dvt_engine.admission")

#: A reservation for a run that is not registered yet lapses after this many seconds.
RESERVATION_LEASE_S = 120.0
#: A queued run claimed by a dispatcher that died is claimed again after this many seconds.
CLAIM_LEASE_S = 60.0
#: The largest count or rate a limit may name; above it a limit is a typo, not a policy.
MAX_LIMIT = 1_000_000
#: The largest plan size a limit may name (1 GiB).
MAX_PLAN_BYTES_LIMIT = 1 << 30
#: A process that refused a tenant's start for its start rate refuses the tenant's next starts
#: itself, without asking the store, until the next token is due, but never for longer than
#: this: a limit raised in another process applies here within this many seconds.
RATE_MEMO_MAX_S = 1.0
#: Statuses that hold a slot: registered and not terminal.
ACTIVE_STATUSES: tuple[RunStatus, ...] = tuple(
    s for s in RunStatus if not s.is_terminal and s is not RunStatus.QUEUED)



def _whole_number(value: Any) -> Any:
    """JSON has one number type: 44.0 is the integer 44 (as in JSON Schema); 44.5 and "44"
    stay refused."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2 ** 53:
        return int(value)
    return value


# The validator comes last so it wraps the constrained integer (and runs first), which keeps
# the bounds in the JSON Schema as minimum and maximum.
Count = Annotated[int, Strict(), Field(ge=1, le=MAX_LIMIT), BeforeValidator(_whole_number)]
Bytes = Annotated[int, Strict(), Field(ge=1, le=MAX_PLAN_BYTES_LIMIT),
                  BeforeValidator(_whole_number)]
# Settings come from environment text, so they may not be strict.
_SettingCount = Annotated[int, Field(ge=1, le=MAX_LIMIT)]
_SettingBytes = Annotated[int, Field(ge=1, le=MAX_PLAN_BYTES_LIMIT)]


class Overflow(StrEnum):
    """What happens to a start over the tenant's concurrency or rate limit."""

    REJECT = "reject"
    QUEUE = "queue"


class _Limits(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              frozen=True)


class TenantLimits(_Limits):
    """A tenant's effective limits (settings defaults with the tenant's overrides on top)."""

    max_active_runs: Count = 100
    run_starts_per_minute: Count = 600
    signals_per_minute: Count = 600
    max_plan_steps: Count = 1000
    max_plan_bytes: Bytes = 1 << 20
    overflow: Overflow = Overflow.REJECT
    max_queued_runs: Count = 10_000
    # Enforced at run starts by dvt_engine.cost.check_budget (docs/cost.md).
    monthly_budget_units: Count | None = None
    budget_policy: Literal["warn", "block"] = "warn"

    def document(self) -> dict[str, Any]:
        """The limits as the API shows them (camelCase keys, every field)."""
        return self.model_dump(mode="json", by_alias=True)


class LimitsPatch(_Limits):
    """A partial update of a tenant's limits: given fields replace, ``null`` restores defaults."""

    max_active_runs: Count | None = None
    run_starts_per_minute: Count | None = None
    signals_per_minute: Count | None = None
    max_plan_steps: Count | None = None
    max_plan_bytes: Bytes | None = None
    overflow: Overflow | None = None
    max_queued_runs: Count | None = None
    monthly_budget_units: Count | None = None
    budget_policy: Literal["warn", "block"] | None = None

    @classmethod
    def parse(cls, data: Any) -> LimitsPatch:
        """Validate a patch (camelCase or snake_case keys); LIMITS_INVALID names what is wrong."""
        if not isinstance(data, Mapping):
            raise LimitsInvalid("limits must be an object", details={"issues": [
                {"path": "", "message": "expected an object"}]})
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            issues = [{"path": "/".join(str(p) for p in e["loc"]), "message": e["msg"]}
                      for e in exc.errors()]
            raise LimitsInvalid("limits refused: " + "; ".join(
                f"{i['path']}: {i['message']}" for i in issues), details={"issues": issues}
            ) from None

    def apply(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The stored overrides after this patch (camelCase keys; null fields dropped)."""
        merged = dict(overrides)
        for name in self.model_fields_set:
            key = to_camel(name)
            value = getattr(self, name)
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value.value if isinstance(value, StrEnum) else value
        return merged


class LimitSettings(BaseSettings):
    """Defaults for every tenant (``DVT_LIMITS_*``); per-tenant overrides are stored."""

    model_config = SettingsConfigDict(env_prefix="DVT_LIMITS_", extra="forbid", frozen=True)

    enabled: bool = False
    max_active_runs: _SettingCount = 100
    run_starts_per_minute: _SettingCount = 600
    signals_per_minute: _SettingCount = 600
    max_plan_steps: _SettingCount = 1000
    max_plan_bytes: _SettingBytes = 1 << 20
    overflow: Overflow = Overflow.REJECT
    max_queued_runs: _SettingCount = 10_000

    def defaults(self) -> TenantLimits:
        """The limits of a tenant without overrides."""
        return TenantLimits.model_validate(self.model_dump(exclude={"enabled"}))


def effective_limits(defaults: TenantLimits, overrides: Mapping[str, Any]) -> TenantLimits:
    """Defaults with the stored overrides on top (an override no longer valid is ignored)."""
    merged = defaults.document()
    merged.update(overrides)
    try:
        return TenantLimits.model_validate(merged)
    except ValidationError:
        log.warning("stored limits override refused; using the defaults")
        return defaults


def plan_problem(limits: TenantLimits, steps: int, size: int) -> None:
    """QUOTA_EXCEEDED when the plan is larger than the tenant may run."""
    if steps > limits.max_plan_steps:
        raise QuotaExceeded(f"the plan has {steps} steps; this tenant may run at most "
                            f"{limits.max_plan_steps}",
                            details={"kind": "planSteps", "limit": limits.max_plan_steps,
                                     "actual": steps})
    if size > limits.max_plan_bytes:
        raise QuotaExceeded(f"the plan has {size} bytes; this tenant may run at most "
                            f"{limits.max_plan_bytes}",
                            details={"kind": "planBytes", "limit": limits.max_plan_bytes,
                                     "actual": size})


@dataclass(frozen=True)
class Bucket:
    """A token bucket: ``tokens`` at ``at``; it refills ``per_minute`` tokens a minute, up to
    ``per_minute`` (a minute's worth may come at once)."""

    tokens: float
    at: datetime

    def take(self, per_minute: int, now: datetime) -> tuple[Bucket, float]:
        """The bucket after taking one token and 0, or unchanged and seconds until one is due."""
        rate = per_minute / 60.0
        elapsed = max(0.0, (now - self.at).total_seconds())
        tokens = min(float(per_minute), self.tokens + elapsed * rate)
        if tokens >= 1.0:
            return Bucket(tokens - 1.0, now), 0.0
        return Bucket(tokens, now), (1.0 - tokens) / rate


def full_bucket(per_minute: int, now: datetime) -> Bucket:
    """A tenant's first bucket: full."""
    return Bucket(float(per_minute), now)


def rate_limited(kind: str, tenant_id: str, retry_after_s: float, limit: int) -> RateLimited:
    """The refusal for a start or signal over a limit; ``retryAfterS`` is whole seconds."""
    wait = max(1, math.ceil(retry_after_s))
    refused = RateLimited(f"tenant {tenant_id!r} is over its {kind} limit ({limit}); "
                          f"retry in {wait}s", details={"kind": kind, "limit": limit,
                                                        "retryAfterS": wait})
    _EXACT_WAITS[refused] = retry_after_s
    return refused


# The unrounded wait of each refusal (the details carry whole seconds), so the refusing
# process can remember exactly until when the tenant's start bucket is empty.
_EXACT_WAITS: weakref.WeakKeyDictionary[RateLimited, float] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class StartRequest:
    """A run start as admission sees it: who, what, and the plan's size."""

    plan_ref: PlanRef
    context: RunContext
    plan_steps: int
    plan_bytes: int

    @property
    def tenant_id(self) -> str:
        """The tenant the run belongs to."""
        return self.context.tenant_id

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.context.run_id

    @property
    def request_key(self) -> str:
        """The run-request key the store registers the run under."""
        c = self.context
        return run_request_key(c.tenant_id, c.project_id, c.environment_id,
                               self.plan_ref.plan_id, self.plan_ref.plan_version,
                               c.run_request_id or c.run_id)

    def payload(self) -> tuple[str, str]:
        """The plan reference and the context as JSON text, for a durable queue."""
        return (self.plan_ref.model_dump_json(by_alias=True),
                self.context.model_dump_json(by_alias=True))


@dataclass(frozen=True)
class Admission:
    """The verdict on a start: go ahead (a slot is held) or QUEUED at ``position`` (1-based)."""

    queued: bool
    position: int | None = None
    run_id: str | None = None


QueueState = Literal["QUEUED", "STARTING", "CANCELLED", "FAILED"]


@dataclass(frozen=True)
class QueuedRun:
    """A run waiting in its tenant's queue (or claimed, cancelled or failed to start there)."""

    seq: int
    plan_ref: PlanRef
    context: RunContext
    state: QueueState
    enqueued_at: datetime
    error: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, seq: int, plan_ref: str | Mapping[str, Any], context: str | Mapping[str, Any],
           state: str, enqueued_at: datetime, error: Any = None) -> QueuedRun:
        """Rebuild a queue row from its stored JSON."""
        ref = json.loads(plan_ref) if isinstance(plan_ref, str) else plan_ref
        ctx = json.loads(context) if isinstance(context, str) else context
        err = json.loads(error) if isinstance(error, str) else error
        return cls(seq, PlanRef.model_validate(ref), RunContext.model_validate(ctx),
                   state, enqueued_at, err)  # type: ignore[arg-type]

    @property
    def tenant_id(self) -> str:
        """The run's tenant."""
        return self.context.tenant_id

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.context.run_id


@dataclass(frozen=True)
class BudgetCrossing:
    """A tenant's usage reached ``threshold`` percent of its budget in ``month`` (YYYY-MM)."""

    tenant_id: str
    month: str
    threshold: int
    used_units: Decimal
    budget_units: int

    def document(self) -> dict[str, Any]:
        """JSON-safe data (units as a string: exact)."""
        return {"tenantId": self.tenant_id, "month": self.month, "threshold": self.threshold,
                "usedUnits": str(self.used_units), "budgetUnits": self.budget_units}


class AdmissionStore(abc.ABC):
    """Limits per tenant and the atomic admission of run starts (and signals) against them."""

    def __init__(self, settings: LimitSettings | None = None) -> None:
        self.settings = settings if settings is not None else LimitSettings()
        self._crossings: dict[tuple[str, str, int], BudgetCrossing] = {}
        # tenant -> (monotonic time its next start token is due, its runStartsPerMinute)
        self._no_starts: dict[str, tuple[float, int]] = {}

    def refuse_early(self, tenant_id: str) -> None:
        """RATE_LIMITED at once when this process knows the tenant has no start token yet.

        A tenant sending many times its start rate is refused here, with no database work,
        so its flood costs its neighbours almost nothing (docs/limits.md). Call it before
        any other work of a start; ``admit`` calls it too.
        """
        memo = self._no_starts.get(tenant_id)
        if memo is None:
            return
        left = memo[0] - time.monotonic()
        if left <= 0:
            del self._no_starts[tenant_id]
            return
        raise rate_limited("runStartsPerMinute", tenant_id, left, memo[1])

    async def admit(self, request: StartRequest) -> Admission:
        """Check the limits and hold a slot (or queue the run) in one atomic step.

        A start whose run-request key is already registered or queued is admitted again
        without a new slot (starting is idempotent). Raises QUOTA_EXCEEDED for a plan over
        the size limits and RATE_LIMITED when the tenant rejects overflow or its queue is full.
        """
        self.refuse_early(request.tenant_id)
        try:
            return await self._admit(request)
        except RateLimited as exc:
            wait = _EXACT_WAITS.get(exc)
            if exc.details.get("kind") == "runStartsPerMinute" and wait is not None:
                self._no_starts[request.tenant_id] = (
                    time.monotonic() + min(wait, RATE_MEMO_MAX_S), int(exc.details["limit"]))
            raise

    async def set_limits(self, tenant_id: str, patch: LimitsPatch) -> TenantLimits:
        """Apply a patch to the tenant's overrides; the effective limits after it."""
        self._no_starts.pop(tenant_id, None)  # a raised rate applies here at once
        return await self._set_limits(tenant_id, patch)

    async def record_crossing(self, crossing: BudgetCrossing) -> bool:
        """Keep a budget threshold crossing once; False when it was already kept.

        This default keeps them in process memory (the memory store's lifetime); a lasting
        store overrides it with a table, so every process records a crossing once.
        """
        key = (crossing.tenant_id, crossing.month, crossing.threshold)
        if key in self._crossings:
            return False
        self._crossings[key] = crossing
        return True

    async def crossings(self, tenant_id: str) -> list[BudgetCrossing]:
        """The tenant's recorded crossings, oldest month and lowest threshold first."""
        return sorted((c for c in self._crossings.values() if c.tenant_id == tenant_id),
                      key=lambda c: (c.month, c.threshold))

    async def limits(self, tenant_id: str) -> TenantLimits:
        """The tenant's effective limits."""
        return effective_limits(self.settings.defaults(), await self.overrides(tenant_id))

    @abc.abstractmethod
    async def overrides(self, tenant_id: str) -> dict[str, Any]:
        """The tenant's stored overrides (camelCase keys), ``{}`` when none."""

    @abc.abstractmethod
    async def _set_limits(self, tenant_id: str, patch: LimitsPatch) -> TenantLimits:
        """The store's half of ``set_limits``."""

    @abc.abstractmethod
    async def _admit(self, request: StartRequest) -> Admission:
        """The store's half of ``admit``: the one atomic step."""

    @abc.abstractmethod
    async def release(self, tenant_id: str, run_id: str) -> None:
        """Drop a reservation whose start failed before the run was registered."""

    @abc.abstractmethod
    async def take_signal(self, tenant_id: str) -> None:
        """Count one signal of the tenant; RATE_LIMITED when over signalsPerMinute."""

    @abc.abstractmethod
    async def claim(self, tenant_id: str) -> QueuedRun | None:
        """Take the head of the tenant's queue when a slot and a start are free (else None)."""

    @abc.abstractmethod
    async def finish_claim(self, run: QueuedRun, error: DvtError | None = None) -> None:
        """The claimed run started (its row goes) or failed for good (kept as FAILED)."""

    @abc.abstractmethod
    async def cancel_queued(self, tenant_id: str, run_id: str) -> bool:
        """Cancel a run still waiting in the queue; False when it is not waiting there."""

    @abc.abstractmethod
    async def queued_run(self, tenant_id: str, run_id: str) -> QueuedRun | None:
        """The tenant's queue row for a run (waiting, cancelled or failed), or None."""

    @abc.abstractmethod
    async def queued_tenants(self) -> list[str]:
        """Tenants with runs waiting, in name order."""

    @abc.abstractmethod
    async def queue_depths(self) -> dict[str, int]:
        """Runs waiting per tenant (tenants with none left out)."""

    async def close(self) -> None:
        """Release connections; the default has nothing to release."""
        return None


#: Sizes of plans seen, by digest: plans are content-addressed, so a size never changes.
_SIZES: dict[str, tuple[int, int]] = {}
_SIZES_MAX = 4096


async def plan_size(store: RunStateStore, plan_ref: PlanRef) -> tuple[int, int]:
    """The number of steps and bytes of a stored plan (0 steps when unreadable)."""
    known = _SIZES.get(plan_ref.sha256)
    if known is not None:
        return known
    data = await store.get_plan(plan_ref.sha256)
    if data is None:
        return 0, plan_ref.size_bytes or 0
    try:
        steps = json.loads(data).get("steps") or []
    except (ValueError, AttributeError):
        steps = []
    if len(_SIZES) >= _SIZES_MAX:
        _SIZES.clear()
    _SIZES[plan_ref.sha256] = found = (len(steps) if isinstance(steps, list) else 0), len(data)
    return found


class Dispatcher:
    """Starts queued runs as slots free: one per tenant per round, tenants in turn.

    Every process that shares the admission store may run one; claims are atomic, and a claim
    whose process died is taken over after CLAIM_LEASE_S (the engine's start is idempotent on
    the run-request key, so a second start finds the first run).
    """

    def __init__(self, admission: AdmissionStore, engine: WorkflowEngine, *,
                 poll_s: float = 0.2, idle_s: float = 5.0) -> None:
        self.admission = admission
        self.engine = engine
        # While a queue holds runs, slots free when runs end anywhere: look often. With every
        # queue empty, only a run queued by another process is missed between looks, so an idle
        # store is asked once per idle_s (a local queueing wakes the loop at once).
        self.poll_s = poll_s
        self.idle_s = idle_s
        self._backlog = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._turn = 0

    def start(self) -> None:
        """Run the dispatch loop in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._forever(), name="dvt-admission-dispatch")

    def wake(self) -> None:
        """Look at the queues now (a run was queued or ended in this process)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop the loop; a start under way finishes or is taken over after the lease."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _forever(self) -> None:
        while True:
            try:
                started = await self.round()
            except Exception as exc:  # the store may be down for a moment; try again later
                log.warning("dispatch round failed", extra={"code": type(exc).__name__})
                started = 0
            if not started:
                self._wake.clear()
                await settles_within(self._wake.wait(),
                                     self.poll_s if self._backlog else self.idle_s)

    async def round(self) -> int:
        """Start at most one queued run per tenant, beginning after the last tenant served."""
        tenants = await self.admission.queued_tenants()
        self._backlog = bool(tenants)
        if not tenants:
            return 0
        first = self._turn % len(tenants)
        claimed: list[QueuedRun] = []
        for tenant in tenants[first:] + tenants[:first]:
            run = await self.admission.claim(tenant)
            if run is not None:
                claimed.append(run)
        self._turn = first + 1
        # Claims go in turn; the starts go together, so a slow start of one tenant's run
        # (an engine round trip) does not hold back the next tenant's.
        outcomes = await asyncio.gather(*(self._start(run) for run in claimed),
                                        return_exceptions=True)
        for outcome in outcomes:  # every start has ended; the round fails with the first error
            if isinstance(outcome, BaseException):
                raise outcome
        return len(claimed)

    async def _start(self, run: QueuedRun) -> None:
        try:
            await self.engine.start_run(run.plan_ref, run.context)
        except DvtError as exc:
            if exc.retryable:  # claimed again after the lease
                log.warning("queued run start failed", extra={"code": str(exc.code)})
                return
            await self.admission.finish_claim(run, exc)
            await self.admission.release(run.tenant_id, run.run_id)
            return
        await self.admission.finish_claim(run)
