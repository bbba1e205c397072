"""The host API: a Client opened from typed settings, and a RunHandle per run.

>>> async with await Client.connect(store=MemoryStoreSettings(), engine=ReferenceSettings(),
...                                 registry=registry, tenant="acme") as client:
...     handle = await client.start_run(plan, run_id="r-1")
...     snapshot = await handle.result()

The client finds the engine and the store through their entry points (``dvt.engines``,
``dvt.stores``) and closes both on exit (a store passed in as an object stays open: its owner
closes it). Signals are typed: each handle method builds its payload model and returns the
recorded SignalDecision (a refusal is a decision too; ``raise_for_rejection`` turns it into the
coded error).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from pydantic import TypeAdapter, ValidationError

from dvt_engine.admission import (
    AdmissionStore,
    BudgetCrossing,
    Dispatcher,
    QueuedRun,
    StartRequest,
    plan_size,
)
from dvt_engine.artifacts import ArtifactStore
from dvt_engine.cost import BudgetWatch, PriceTable, check_budget
from dvt_engine.errors import RunNotFound, RunTerminal, UsageError
from dvt_engine.labels import validate_labels
from dvt_engine.models.events import TERMINAL_RUN_EVENTS, Event
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.run import EngineRunRef, RunContext, RunStatus, RunSummary
from dvt_engine.models.signals import (
    Actor,
    ApproveRunPayload,
    ApproveStepPayload,
    CancelPayload,
    CustomSignalPayload,
    PausePayload,
    ResumePayload,
    RetryRunPayload,
    RetryStepPayload,
    Role,
    SignalDecision,
    SignalPayload,
    SignalRequest,
    SignalType,
    SkipStepPayload,
)
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.planning.fetch import store_plan
from dvt_engine.plugins import open_configured_artifact_store, open_engine, open_store
from dvt_engine.ports import (
    Authorizer,
    PlanFetcher,
    RunStateStore,
    SecretsProvider,
    WorkflowEngine,
)
from dvt_engine.settings import (
    ArtifactStoreSettings,
    EngineSettings,
    MemoryStoreSettings,
    ReferenceSettings,
    StoreSettings,
)
from dvt_engine.steps.registry import HandlerRegistry, default_registry
from dvt_engine.waiting import wait_for_terminal

PlanInput = PlanRef | ExecutionPlan | Mapping[str, Any] | bytes | str | os.PathLike[str]
"""What ``start_run`` takes: a stored PlanRef, a plan document (dict, e.g. from PlanBuilder),
an ExecutionPlan, the plan file's bytes or JSON text, or a path to the file."""

_RUN_REF = TypeAdapter(EngineRunRef)

log = logging.getLogger("dvt_engine.client")


async def _log_crossings(crossings: Sequence[BudgetCrossing]) -> None:
    """A library host hears of a budget crossing in its log (the service also sends it)."""
    for crossing in crossings:
        log.warning("budget threshold crossed", extra=crossing.document())


@dataclass(frozen=True)
class RunPage:
    """A page of the tenant's runs, newest first.

    The store's run index pages by count only (no cursor): ``has_more`` says whether more runs
    match than ``limit``; narrow the filters or raise the limit to see them.
    """

    items: tuple[RunSummary, ...]
    limit: int
    has_more: bool


class Client:
    """One engine over one store, for one tenant; open it with ``await Client.connect(...)``."""

    def __init__(
        self,
        *,
        engine: WorkflowEngine,
        store: RunStateStore,
        tenant: str,
        project: str = "default",
        environment: str = "dev",
        actor: Actor | None = None,
        owns_store: bool = False,
        admission: AdmissionStore | None = None,
    ) -> None:
        self.engine = engine
        self.admission = admission
        #: What usage costs when a tenant's budget is checked (docs/cost.md).
        self.prices = PriceTable()
        self._dispatcher = Dispatcher(admission, engine) if admission is not None else None
        # Budget crossings are noticed as the tenant's runs use units, not only at starts.
        self._budget = BudgetWatch(admission, store, lambda: self.prices, _log_crossings) \
            if admission is not None else None
        self.store = store
        self.tenant = tenant
        self.project = project
        self.environment = environment
        self.actor = actor if actor is not None else Actor(id="host")
        self._owns_store = owns_store
        self._owned_artifacts: ArtifactStore | None = None
        self._closed = False

    @property
    def artifacts(self) -> ArtifactStore | None:
        """The engine's artifact store (None when it has none)."""
        found = getattr(self.engine, "artifacts", None)
        return found if isinstance(found, ArtifactStore) else None

    @classmethod
    async def connect(
        cls,
        *,
        tenant: str,
        store: StoreSettings | RunStateStore | None = None,
        engine: EngineSettings | None = None,
        registry: HandlerRegistry | None = None,
        project: str = "default",
        environment: str = "dev",
        actor: str = "host",
        roles: Sequence[Role | str] = (),
        authorizer: Authorizer | None = None,
        secrets: SecretsProvider | None = None,
        fetchers: dict[str, PlanFetcher] | None = None,
        artifacts: ArtifactStoreSettings | ArtifactStore | None = None,
        admission: AdmissionStore | None = None,
    ) -> Client:
        """Open the store and the engine from typed settings and return the client.

        Defaults: ``MemoryStoreSettings()`` and ``ReferenceSettings()`` (in process, no server).
        ``registry`` defaults to the built-in kinds plus installed ``dvt.step_handlers``
        entry points. ``actor``/``roles`` are who this host signals as (no roles: every signal
        is refused with SIGNAL_UNAUTHORIZED); each signal call may name another actor.
        ``artifacts`` is where ``ctx.artifacts.put`` stores bytes: default
        ``ArtifactStoreSettings()`` (``DVT_ARTIFACTS_URL``, else ``$DVT_HOME/artifacts``);
        a store passed as an object stays open, like ``store``. With ``admission`` every
        start is admitted against the tenant's limits first (docs/limits.md) and this client
        also starts queued runs as slots free; the caller closes it.
        """
        made_store = store is None or isinstance(store, StoreSettings)
        opened = await open_store(store if isinstance(store, StoreSettings)
                                  else MemoryStoreSettings()) if made_store else store
        assert isinstance(opened, RunStateStore)
        made_artifacts: ArtifactStore | None = None
        try:
            if isinstance(artifacts, ArtifactStore):
                artifact_store: ArtifactStore | None = artifacts
            else:
                made_artifacts = await open_configured_artifact_store(artifacts, secrets=secrets)
                artifact_store = made_artifacts
            objects: dict[str, Any] = {
                "registry": registry if registry is not None else default_registry(),
                "artifacts": artifact_store,
            }
            if authorizer is not None:
                objects["authorizer"] = authorizer
            if secrets is not None:
                objects["secrets"] = secrets
            if fetchers is not None:
                objects["fetchers"] = fetchers
            made_engine = open_engine(engine or ReferenceSettings(), store=opened, **objects)
        except BaseException:
            if made_artifacts is not None:
                await made_artifacts.close()
            if made_store:
                await opened.close()
            raise
        client = cls(engine=made_engine, store=opened, tenant=tenant, project=project,
                     environment=environment,
                     actor=Actor(id=actor, roles=tuple(map(Role, roles))),
                     owns_store=made_store, admission=admission)
        client._owned_artifacts = made_artifacts
        if client._dispatcher is not None:
            client._dispatcher.start()
        if client._budget is not None:
            client._budget.follow(tenant)
        return client

    async def close(self) -> None:
        """Close the engine (draining its workers), then the store if the client opened it."""
        if self._closed:
            return
        self._closed = True
        if self._dispatcher is not None:
            await self._dispatcher.stop()
        if self._budget is not None:
            await self._budget.close()
        try:
            await self.engine.close()
        finally:
            try:
                if self._owned_artifacts is not None:
                    await self._owned_artifacts.close()
            finally:
                if self._owns_store:
                    await self.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- runs ----------------------------------------------------------------------------
    async def store_plan(self, plan: PlanInput) -> PlanRef:
        """Validate a plan and store it in the store's plan registry once; its PlanRef."""
        if isinstance(plan, PlanRef):
            return plan
        if isinstance(plan, os.PathLike):
            with open(plan, "rb") as file:  # noqa: ASYNC230 - a plan file is small
                plan = file.read()
        return await store_plan(self.store, plan)

    async def start_run(
        self,
        plan: PlanInput,
        *,
        run_id: str | None = None,
        run_request_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        triggered_by: str | None = None,
        project: str | None = None,
        environment: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> RunHandle:
        """Store the plan (unless it is a PlanRef), start a run and return its handle.

        Starting is idempotent on ``run_request_id`` (default: the run id): a repeat finds the
        same run. Without ``run_id`` a UUID is chosen. ``labels`` (at most 20 ``key: value``
        strings, LABELS_INVALID otherwise) stay with the run and filter ``list_runs``.
        With admission, a start over the tenant's limits raises RATE_LIMITED or QUOTA_EXCEEDED,
        or returns the handle of a QUEUED run when the tenant queues overflow.
        """
        context = RunContext(
            tenant_id=self.tenant, project_id=project or self.project,
            environment_id=environment or self.environment,
            run_id=run_id or str(uuid.uuid4()), run_request_id=run_request_id,
            triggered_by=triggered_by or self.actor.id, params=dict(params or {}),
            labels=dict(labels or {}),
        )
        plan_ref = await self.store_plan(plan)
        if self.admission is not None:
            self.admission.refuse_early(self.tenant)  # a flood over the rate costs nothing
            steps, size = await plan_size(self.store, plan_ref)
            budget = await check_budget(self.admission, self.store, self.tenant, self.prices)
            await _log_crossings(budget.new_crossings)
            budget.refuse_if_spent()
            verdict = await self.admission.admit(StartRequest(plan_ref, context, steps, size))
            if verdict.queued:
                if self._dispatcher is not None:
                    self._dispatcher.wake()
                return RunHandle(self, verdict.run_id or context.run_id)
        try:
            ref = await self.engine.start_run(plan_ref, context)
        except BaseException:
            if self.admission is not None:
                await self.admission.release(self.tenant, context.run_id)
            raise
        return RunHandle(self, context.run_id, run_ref=ref)

    def get_run(self, run_id: str) -> RunHandle:
        """A handle on an existing run of this tenant (checked on first use: RUN_NOT_FOUND)."""
        return RunHandle(self, run_id)

    async def list_runs(
        self,
        *,
        status: Sequence[RunStatus | str] | None = None,
        project: str | None = None,
        environment: str | None = None,
        plan_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
    ) -> RunPage:
        """The tenant's runs, newest first, from the store's latest-status index.

        Every filter given must hold: ``labels`` every pair, ``created_after <= createdAt <
        created_before`` (timezone-aware datetimes).
        """
        if limit < 1:
            raise UsageError("limit must be >= 1", details={"limit": limit})
        for name, when in (("created_after", created_after), ("created_before", created_before)):
            if when is not None and when.utcoffset() is None:
                raise UsageError(f"{name} must be timezone-aware", details={"field": name})
        rows = await self.store.list_runs(
            self.tenant, status=[RunStatus(s) for s in status] if status else None,
            project_id=project, environment_id=environment, plan_id=plan_id,
            labels=validate_labels(labels) or None, created_after=created_after,
            created_before=created_before, limit=limit + 1,
        )
        return RunPage(items=tuple(rows[:limit]), limit=limit, has_more=len(rows) > limit)


class RunHandle:
    """One run: read its snapshot and events, wait for its end, steer it with signals."""

    def __init__(self, client: Client, run_id: str, *, run_ref: EngineRunRef | None = None):
        self.client = client
        self.run_id = run_id
        self._run_ref = run_ref

    def __repr__(self) -> str:
        return f"<RunHandle {self.client.tenant}/{self.run_id}>"

    async def snapshot(self) -> RunSnapshot:
        """The run's current snapshot (RUN_NOT_FOUND when this tenant has no such run)."""
        snapshot = await self.client.store.get_snapshot(self.client.tenant, self.run_id)
        if snapshot is None:
            raise RunNotFound(f"run {self.run_id!r} not found", details={"runId": self.run_id})
        return snapshot

    async def status(self) -> RunStatus:
        """The run's status; QUEUED (or CANCELLED) while it is in its tenant's queue."""
        queued = await self._queued()
        if queued is not None and queued.state != "STARTING":
            return RunStatus.QUEUED if queued.state == "QUEUED" \
                else RunStatus.CANCELLED if queued.state == "CANCELLED" else RunStatus.FAILED
        snapshot = await self.client.store.get_snapshot(self.client.tenant, self.run_id)
        if snapshot is None and queued is not None:  # claimed, not registered yet
            return RunStatus.QUEUED
        return (await self.snapshot()).status if snapshot is None else snapshot.status

    async def result(self, *, timeout: float | None = None) -> RunSnapshot:
        """Wait for the terminal snapshot (COMPLETED, FAILED or CANCELLED) and return it.

        A FAILED or CANCELLED run is returned, not raised: look at ``status`` and ``failure``.
        ``timeout`` (seconds, default: none) raises TimeoutError when it passes first. A run
        cancelled while QUEUED has no snapshot: RUN_TERMINAL.
        """
        async with asyncio.timeout(timeout):
            while (queued := await self._queued()) is not None:
                if queued.state in ("CANCELLED", "FAILED"):
                    raise RunTerminal(f"run {self.run_id!r} ended in the queue ({queued.state})",
                                      details={"runId": self.run_id, "state": queued.state})
                # A queued run has no events to follow yet; the dispatcher starts it.
                await asyncio.sleep(0.05)
        return await wait_for_terminal(self.client.store, self.client.tenant, self.run_id,
                                       timeout=timeout)

    async def events(self, *, follow: bool = True, after_seq: int = 0) -> AsyncIterator[Event]:
        """The run's events in runSeq order; with ``follow`` new ones as they come, until the
        run's terminal event."""
        store, tenant = self.client.store, self.client.tenant
        snapshot = await self.snapshot()
        last = after_seq
        for event in await store.fetch_events(tenant, self.run_id, after_seq=after_seq):
            yield event
            last = event.run_seq or last
            if follow and event.event_type in TERMINAL_RUN_EVENTS:
                return
        if not follow or snapshot.status.is_terminal:
            return
        async for event in store.follow(tenant, self.run_id, after_seq=last):
            yield event
            if event.event_type in TERMINAL_RUN_EVENTS:
                return

    # --- signals -------------------------------------------------------------------------
    async def signal(
        self,
        payload: SignalPayload | str,
        data: Mapping[str, Any] | None = None,
        *,
        signal_id: str | None = None,
        actor: Actor | None = None,
    ) -> SignalDecision:
        """Send one typed signal, or the custom signal named ``payload`` with ``data`` (plan
        v1.3); the recorded decision (a repeated ``signal_id`` repeats it)."""
        if isinstance(payload, str):
            payload = CustomSignalPayload(name=payload, data=dict(data or {}))
        request = SignalRequest.of(
            payload, signal_id=signal_id or str(uuid.uuid4()), tenant_id=self.client.tenant,
            run_id=self.run_id, actor=actor or self.client.actor,
        )
        if self.client.admission is not None:  # signalsPerMinute: RATE_LIMITED when over
            await self.client.admission.take_signal(self.client.tenant)
        return await self.client.engine.signal(await self._engine_ref(), request)

    async def pause(self, reason: str | None = None, **kw: Any) -> SignalDecision:
        """PAUSE: schedule no new step until RESUME."""
        return await self.signal(PausePayload(reason=reason), **kw)

    async def resume(self, **kw: Any) -> SignalDecision:
        """RESUME a paused run."""
        return await self.signal(ResumePayload(), **kw)

    async def cancel(self, reason: str | None = None, **kw: Any) -> SignalDecision:
        """CANCEL: cooperative stop of the run; a QUEUED run leaves its queue at once."""
        admission = self.client.admission
        if admission is not None and await admission.cancel_queued(self.client.tenant,
                                                                   self.run_id):
            return SignalDecision(signal_id=kw.get("signal_id") or str(uuid.uuid4()),
                                  type=SignalType.CANCEL, run_id=self.run_id, accepted=True)
        return await self.signal(CancelPayload(reason=reason), **kw)

    async def _queued(self) -> QueuedRun | None:
        admission = self.client.admission
        if admission is None:
            return None
        return await admission.queued_run(self.client.tenant, self.run_id)

    async def retry_step(
        self, step_id: str, reason: str | None = None, **kw: Any
    ) -> SignalDecision:
        """RETRY_STEP: a FAILED step gets a new logical attempt."""
        return await self.signal(RetryStepPayload(step_id=step_id, reason=reason), **kw)

    async def skip_step(
        self, step_id: str, reason: str | None = None, **kw: Any
    ) -> SignalDecision:
        """SKIP_STEP: a step that has not run (or failed finally) becomes SKIPPED."""
        return await self.signal(SkipStepPayload(step_id=step_id, reason=reason), **kw)

    async def approve(
        self, step_id: str, comment: str | None = None, **kw: Any
    ) -> SignalDecision:
        """APPROVE_STEP with decision approve: the gate completes."""
        return await self.signal(
            ApproveStepPayload(step_id=step_id, decision="approve", comment=comment), **kw)

    async def reject(
        self, step_id: str, comment: str | None = None, **kw: Any
    ) -> SignalDecision:
        """APPROVE_STEP with decision reject: the gate fails with APPROVAL_REJECTED."""
        return await self.signal(
            ApproveStepPayload(step_id=step_id, decision="reject", comment=comment), **kw)

    async def approve_run(self, comment: str | None = None, **kw: Any) -> SignalDecision:
        """APPROVE_RUN: let a run whose plan requires approval start."""
        return await self.signal(ApproveRunPayload(decision="approve", comment=comment), **kw)

    async def retry_run(
        self, new_run_id: str | None = None, reason: str | None = None, **kw: Any
    ) -> SignalDecision:
        """RETRY_RUN: start a new run of the same plan (``decision.new_run_id`` names it)."""
        return await self.signal(RetryRunPayload(new_run_id=new_run_id, reason=reason), **kw)

    async def _engine_ref(self) -> EngineRunRef:
        """The engine's reference of the run: from start_run, the snapshot, or the header."""
        if self._run_ref is not None:
            return self._run_ref
        snapshot = await self.snapshot()
        if snapshot.engine_run_ref:
            try:
                self._run_ref = _RUN_REF.validate_python(snapshot.engine_run_ref)
                return self._run_ref
            except ValidationError:
                pass
        header = await self.client.store.get_run(self.client.tenant, self.run_id)
        maker = getattr(self.client.engine, "run_ref_for", None)
        if header is None or maker is None:
            raise RunNotFound(f"run {self.run_id!r} has no engine reference yet",
                              details={"runId": self.run_id})
        made: EngineRunRef = maker(header)
        return made
