"""The ports: small abstract classes that engines, stores and hosts plug into.

Every method is async. Implementations live in their own modules or packages and are found by
name through entry points (see dvt_engine.plugins).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from dvt_engine.artifacts import ArtifactStore
from dvt_engine.models.events import AppendResult, Event
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.run import (
    EngineRunRef,
    RunContext,
    RunHeader,
    RunStatus,
    RunStatusSnapshot,
    RunSummary,
)
from dvt_engine.models.signals import Actor, Role, SignalDecision, SignalRequest, SignalType
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.models.validation import ValidationReport

#: A tenant cursor: an opaque string a store hands out with each event of a tenant stream.
TenantCursor = str

#: The cursor before a tenant's first event: ``follow_tenant(t, after=TENANT_LOG_START)``
#: replays the tenant's whole log. Every store accepts it.
TENANT_LOG_START: TenantCursor = "0"


@dataclass(frozen=True)
class TenantEvent:
    """One event of a tenant stream and the cursor that resumes the stream right after it."""

    cursor: TenantCursor
    event: Event


class RunStateStore(abc.ABC):
    """The append authority: the only component that assigns runSeq and persistedAt.

    A run is identified by (tenantId, runId): two tenants may use the same runId without
    seeing each other. Reads take the tenant and never return another tenant's rows.
    """

    # --- runs ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def register_run(self, header: RunHeader) -> tuple[RunHeader, bool]:
        """Record a new run; idempotent on (tenantId, runRequestKey).

        Returns the stored header and True when this call created it. A second registration
        with the same run-request key returns the first run's header and False. Reusing a
        runId of the same tenant for a different request raises UsageError; another tenant's
        runId is a fresh one.
        """

    @abc.abstractmethod
    async def get_run(self, tenant_id: str, run_id: str) -> RunHeader | None:
        """The header of a run of this tenant, or None."""

    @abc.abstractmethod
    async def list_runs(
        self,
        tenant_id: str,
        *,
        status: Sequence[RunStatus] | None = None,
        project_id: str | None = None,
        environment_id: str | None = None,
        plan_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        before: tuple[datetime, str] | None = None,
    ) -> list[RunSummary]:
        """Runs of a tenant from the latest-status index, newest first.

        Every filter given must hold: ``status`` any of, ``labels`` every pair (see
        dvt_engine.labels), ``created_after <= createdAt < created_before`` (half open, so
        consecutive windows neither overlap nor leave a gap; timezone-aware datetimes).
        ``before`` is a keyset cursor ``(createdAt, runId)``: only runs ordered after it
        (older, or as old with a smaller runId) are returned, so pages never skip or repeat a
        run.
        """

    # --- the log ------------------------------------------------------------------------
    @abc.abstractmethod
    async def append(self, event: Event) -> AppendResult:
        """Append one event; a repeated (runId, idempotencyKey) inserts nothing.

        The run must be registered and owned by the event's tenant (RUN_NOT_FOUND otherwise).
        The event is validated against its schema first (SCHEMA_VALIDATION_FAILED). A repeated
        key with the same event type and payload is answered ``duplicate: true``; with a
        different type or payload it raises IdempotencyConflict and stores nothing.
        """

    async def append_if_last(self, event: Event, expected_last_seq: int) -> AppendResult | None:
        """Append ``event`` only while the run's last runSeq is ``expected_last_seq``.

        Returns None, appending nothing, when the run has moved on (optimistic concurrency:
        the signal service decides against runSeq N and records the decision at N+1 or not
        at all). This default checks, then appends, so it is atomic only for a store with a
        single writer per run; the bundled stores override it with one atomic step.
        """
        newer = await self.fetch_events(event.tenant_id, event.run_id,
                                        after_seq=expected_last_seq, limit=1)
        if newer:
            return None
        return await self.append(event)

    @abc.abstractmethod
    async def append_batch(self, events: Sequence[Event]) -> list[AppendResult]:
        """Append many events with the same per-event guarantees, results in input order."""

    async def append_batch_if_last(
        self, events: Sequence[Event], expected_last_seq: int
    ) -> list[AppendResult] | None:
        """Append events of one run only while its last runSeq is ``expected_last_seq``.

        ``append_if_last`` for several events of one run: all appended (or answered as
        duplicates) together, or None and nothing appended when the run has moved on. This
        default checks, then appends; the bundled stores override it with one atomic step.
        """
        if not events:
            return []
        first = events[0]
        newer = await self.fetch_events(first.tenant_id, first.run_id,
                                        after_seq=expected_last_seq, limit=1)
        if newer:
            return None
        return await self.append_batch(events)

    @abc.abstractmethod
    async def fetch_events(
        self, tenant_id: str, run_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        """Events of a run with runSeq > after_seq, ascending."""

    @abc.abstractmethod
    async def get_event_by_key(
        self, tenant_id: str, run_id: str, idempotency_key: str
    ) -> Event | None:
        """The event stored under an idempotency key, or None."""

    @abc.abstractmethod
    def follow(
        self, tenant_id: str, run_id: str | None = None, *, after_seq: int = 0
    ) -> AsyncIterator[Event]:
        """New events of one run (or of every run of the tenant) as they are appended.

        For a single run, events come in runSeq order starting after ``after_seq``. Without a
        run it is ``follow_tenant(tenant_id)`` without the cursors. The iterator runs until the
        consumer stops iterating.
        """

    @abc.abstractmethod
    def follow_tenant(
        self, tenant_id: str, *, after: TenantCursor | None = None
    ) -> AsyncIterator[TenantEvent]:
        """Every committed event of the tenant's runs, each once, in the store's commit order.

        ``after=None`` starts at the stream's current end: everything that commits after the
        call is delivered (a store may include a few events that committed just before it).
        A cursor from an earlier TenantEvent resumes right after that event
        (``TENANT_LOG_START``: from the beginning).
        No event is ever delivered after a later one of the same stream, so a consumer that
        stores the cursor of the last event it handled resumes exactly. An unusable cursor
        raises UsageError.
        """

    # --- snapshots ----------------------------------------------------------------------
    @abc.abstractmethod
    async def get_snapshot(self, tenant_id: str, run_id: str) -> RunSnapshot | None:
        """The stored latest projection of a run, or None when the run is unknown."""

    @abc.abstractmethod
    async def project(self, tenant_id: str, run_id: str) -> RunSnapshot:
        """Recompute a run's snapshot from its log (RUN_NOT_FOUND when unknown)."""

    # --- plan registry ------------------------------------------------------------------
    @abc.abstractmethod
    async def put_plan(self, data: bytes) -> str:
        """Store plan bytes once, content-addressed; returns ``plan://sha256/<hex>``."""

    @abc.abstractmethod
    async def get_plan(self, sha256: str) -> bytes | None:
        """The bytes stored under a digest, or None."""

    async def close(self) -> None:
        """Release connections; the default has nothing to release."""
        return None

    async def __aenter__(self) -> RunStateStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class PlanFetcher(abc.ABC):
    """Fetches plan bytes for a URI scheme. Allowlisting and hashing happen around it."""

    schemes: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    async def fetch(self, uri: str, *, max_bytes: int) -> bytes:
        """Return the bytes behind ``uri`` (at most ``max_bytes``)."""


@dataclass(frozen=True)
class AuthorizationRequest:
    """What the authorizer is asked: may this actor send this signal to this run?"""

    actor: Actor
    signal_type: SignalType
    tenant_id: str
    project_id: str
    environment_id: str
    run_id: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    #: For a CUSTOM signal: the roles its plan declares may send it (plan v1.3).
    declared_roles: tuple[Role, ...] = ()


@dataclass(frozen=True)
class AuthorizationResult:
    """The authorizer's answer, with the role the decision rests on (for the audit)."""

    allowed: bool
    effective_role: Role | None = None
    reason: str | None = None


class Authorizer(abc.ABC):
    """Decides whether an actor may send a signal (contract §6.2 rule 3)."""

    @abc.abstractmethod
    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        """Allow or refuse, naming the effective role when allowed."""


class SecretsProvider(abc.ABC):
    """Resolves secret references inside the step runner; values never reach events or logs."""

    @abc.abstractmethod
    async def resolve(self, ref: str) -> str:
        """The secret behind ``ref`` (e.g. ``vault:db/password``); SECRET_NOT_FOUND if none."""


class WorkflowEngine(abc.ABC):
    """One engine port for every workflow engine (contract §7)."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    async def start_run(self, plan_ref: PlanRef, context: RunContext) -> EngineRunRef:
        """Start a run; idempotent on the run-request key."""

    @abc.abstractmethod
    async def cancel_run(self, run_ref: EngineRunRef, reason: str | None = None) -> None:
        """Cancel a run (cooperatively where the engine allows)."""

    @abc.abstractmethod
    async def get_run_status(self, run_ref: EngineRunRef) -> RunStatusSnapshot:
        """The engine's view of a run, for diagnosis."""

    @abc.abstractmethod
    async def signal(self, run_ref: EngineRunRef, request: SignalRequest) -> SignalDecision:
        """Decide a signal (validated, authorized, recorded) and apply it when accepted."""

    @abc.abstractmethod
    async def validate(self, plan: ExecutionPlan) -> ValidationReport:
        """Whether ``plan`` can run on this engine, as data."""

    async def close(self) -> None:
        """Stop workers and release connections."""
        return None

    async def __aenter__(self) -> WorkflowEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass(frozen=True)
class StepResult:
    """What a handler returns: small JSON output, artifact references, and cost units."""

    output: Any = None
    artifacts: Sequence[Any] = ()
    cost_units: float | None = None


class StepContext(abc.ABC):
    """What a handler sees of its run: identity, params, secrets, attempts and cancellation."""

    tenant_id: str
    project_id: str
    environment_id: str
    run_id: str
    plan_id: str
    plan_version: str
    step_id: str
    kind: str
    params: Mapping[str, Any]
    plan_params: Mapping[str, Any]
    logical_attempt_id: int
    engine_attempt_id: int
    max_attempts: int

    @abc.abstractmethod
    async def secret(self, ref: str) -> str:
        """Resolve a secret reference through the host's SecretsProvider."""

    @property
    @abc.abstractmethod
    def artifacts(self) -> ArtifactStore:
        """The run's artifact store: ``await ctx.artifacts.put(data, kind=...)`` gives a ref."""

    @property
    @abc.abstractmethod
    def cancelled(self) -> bool:
        """True once the engine asked this step to stop."""

    @abc.abstractmethod
    async def sleep(self, seconds: float) -> None:
        """Sleep, but raise StepCancelled as soon as the step is asked to stop."""


class StepHandler(abc.ABC):
    """Runs steps of one kind. Raise a DvtError (or any exception) to fail the attempt."""

    kind: ClassVar[str]
    #: JSON Schema of the step's params, checked when a plan is validated; None: any params.
    params_schema: ClassVar[Mapping[str, Any] | None] = None

    @abc.abstractmethod
    async def run(self, ctx: StepContext) -> StepResult:
        """Do the step's work and return its result."""
