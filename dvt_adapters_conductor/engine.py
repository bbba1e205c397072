"""ConductorEngine: the WorkflowEngine port on Conductor OSS or Orkes (contract §8.2)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from dvt_adapters_conductor.api import ConductorApi, ConductorApiError, server_health
from dvt_adapters_conductor.coordinator import (
    CANCEL_REASON_PREFIX,
    ReconcileResult,
    RunContext,
    RunCoordinator,
    _tasks_by_ref,
    cancel_reason_of,
)
from dvt_adapters_conductor.mapping import (
    MappingOptions,
    definition_digest,
    digest_of_definition,
    gate_ref,
    gate_task_definition,
    mapping_warnings,
    registered_step_definition,
    step_ref,
    step_task_types,
    workflow_definition,
    workflow_name,
)
from dvt_adapters_conductor.runs import correlation_id
from dvt_adapters_conductor.worker import WorkerHost, WorkerOptions
from dvt_engine.engine_base import BaseEngine
from dvt_engine.errors import EngineNotConfigured, EngineUnavailable, RunNotFound, UsageError
from dvt_engine.interpreter import Command, RunInterpreter
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import (
    ConductorRunRef,
    EngineRunRef,
    RunHeader,
    RunStatus,
    RunStatusSnapshot,
)
from dvt_engine.models.run import (
    RunContext as DvtRunContext,
)
from dvt_engine.models.signals import SignalType
from dvt_engine.models.validation import ValidationIssue, ValidationReport
from dvt_engine.planning.capabilities import CONDUCTOR_CAPABILITIES
from dvt_engine.rules.signals import is_gate
from dvt_engine.settings import ConductorSettings
from dvt_engine.signals.desired import desired_state, due_signals
from dvt_engine.signals.service import AcceptedSignal
from dvt_engine.steps.runner import StepRunner

logger = logging.getLogger("dvt.conductor")

#: Validation warning code: the server cannot honour a retry policy exactly.
RETRY_APPROXIMATED = "RETRY_POLICY_APPROXIMATED"

#: How many versions of one plan's definition are searched for an identical one.
_VERSION_SEARCH_LIMIT = 50


#: How long a readiness probe waits for the server's health check.
READY_TIMEOUT_S = 2.0


class ConductorEngine(BaseEngine):
    """Runs plans as Conductor workflows.

    ``ConductorEngine(store, settings=ConductorSettings(url=...))``, or keyword options
    (``open_engine("conductor", store=..., server_url=...)``). Without a server URL (nor
    ``DVT_CONDUCTOR_URL``) the first connection raises ENGINE_NOT_CONFIGURED: the library never
    starts a server (`dvt dev up` and the test fixtures do). ``worker=True`` (the default) runs
    a worker host inside this process; ``dvt worker --engine conductor`` runs one on its own.
    """

    name: ClassVar[str] = "conductor"
    capabilities: ClassVar[frozenset[str]] = CONDUCTOR_CAPABILITIES

    def __init__(
        self,
        store: Any,
        *,
        settings: ConductorSettings | None = None,
        server_url: str | None = None,
        auth: Any = None,
        worker: bool | None = None,
        task_prefix: str | None = None,
        lease_s: int | None = None,
        crash_retries: int | None = None,
        owner_email: str | None = None,
        worker_options: WorkerOptions | None = None,
        step_queues: tuple[str, ...] | None = None,
        **options: Any,
    ) -> None:
        given = {"url": server_url, "task_prefix": task_prefix, "lease_s": lease_s,
                 "crash_retries": crash_retries, "owner_email": owner_email,
                 "step_queues": step_queues}
        if settings is None:
            settings = ConductorSettings.from_options(**given)
        elif any(v is not None for v in given.values()):
            raise UsageError("pass either settings= or keyword options, not both")
        options.setdefault("signal_rate_limit_per_minute",
                           settings.signal_rate_limit_per_minute)
        super().__init__(store, **options)
        self.settings = settings
        self.mapping = MappingOptions(task_prefix=settings.task_prefix,
                                      owner_email=settings.owner_email,
                                      lease_s=settings.lease_s,
                                      crash_retries=settings.crash_retries,
                                      class_queues=tuple(sorted(settings.class_queues.items())))
        self.runner = StepRunner(store, self.registry, secrets=self.secrets,
                                 artifacts=self.artifacts)
        self.worker_options = worker_options or WorkerOptions()
        self._server_url = settings.url
        self._auth = auth
        self._embedded_worker = settings.worker if worker is None else worker
        # Workers poll the routed classes' queues too (plan v1.3 resource classes).
        self._step_queues = tuple(dict.fromkeys([*settings.step_queues,
                                                 *settings.class_queues.values()]))
        self._api: ConductorApi | None = None
        self._coordinator: RunCoordinator | None = None
        self._host: WorkerHost | None = None
        self._lock = asyncio.Lock()
        self._registered_types: set[str] = set()
        self._definitions: dict[str, int] = {}

    # --- connection ------------------------------------------------------------------------
    async def coordinator(self) -> RunCoordinator:
        """The connected coordinator (and the embedded worker host, on first use)."""
        if self._coordinator is not None:
            return self._coordinator
        async with self._lock:
            if self._coordinator is None:
                url = self._server_url
                if not url:
                    raise EngineNotConfigured(
                        "no Conductor server URL is configured",
                        details={"hint": "pass ConductorSettings(url=...) (server_url=...) or "
                                         "set DVT_CONDUCTOR_URL; for a local server run "
                                         "`dvt dev up` (or use the test fixtures)"},
                    )
                api = ConductorApi(url, self._auth)
                coordinator = RunCoordinator(
                    self.store, api, self.runner, self.load_plan,
                    task_prefix=self.mapping.task_prefix, clock=self.clock,
                )
                await self._register_task_types(api, [self.mapping.step_type(None)]
                                                + [self.mapping.step_type(q)
                                                   for q in self._step_queues])
                self._api = api
                self._coordinator = coordinator
                if self._embedded_worker:
                    self._host = await self.worker_host().start()
        return self._coordinator

    async def check_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Raise EngineUnavailable unless the server's ``/health`` reports healthy in time."""
        url = self._server_url
        if not url:
            raise EngineNotConfigured("no Conductor server URL is configured")
        healthy, why = await asyncio.to_thread(server_health, url, timeout_s)
        if not healthy:
            raise EngineUnavailable(f"Conductor at {url} is not healthy",
                                    details={"reason": why})

    def worker_host(self) -> WorkerHost:
        """A worker host bound to this engine's store, runner and server."""
        coordinator = self._coordinator
        if coordinator is None:
            raise EngineUnavailable("the engine is not connected yet")
        return WorkerHost(coordinator, self.mapping, self.worker_options,
                          step_queues=self._step_queues)

    async def serve_workers(self, stop: asyncio.Event,
                            queues: Sequence[str] | None = None) -> None:
        """Run a worker host until ``stop`` is set, then drain it (``dvt worker``); with
        ``queues`` it polls only those step queues' task types (not the default type)."""
        coordinator = await self.coordinator()
        if queues:
            host = await WorkerHost(coordinator, self.mapping, self.worker_options,
                                    step_queues=tuple(dict.fromkeys(queues)),
                                    serve_default=False).start()
        else:
            host = self._host or await self.worker_host().start()
        try:
            await stop.wait()
        finally:
            await host.stop()
            if host is self._host:
                self._host = None

    async def close(self) -> None:
        """Stop the embedded worker host, letting running steps finish."""
        host, self._host = self._host, None
        if host is not None:
            await host.stop()
        api, self._api, self._coordinator = self._api, None, None
        if api is not None:
            api.close()

    @property
    def server_url(self) -> str | None:
        """The Conductor API this engine talks to (known once connected)."""
        return self._api.server_url if self._api is not None else self._server_url

    async def _register_task_types(self, api: ConductorApi, step_types: list[str]) -> None:
        wanted = [t for t in step_types if t not in self._registered_types]
        defs = [registered_step_definition(self.mapping, t) for t in wanted]
        if self.mapping.gate_type() not in self._registered_types:
            defs.append(gate_task_definition(self.mapping))
            wanted.append(self.mapping.gate_type())
        if defs:
            await api.run(api.register_task_defs, defs)
            self._registered_types.update(wanted)

    # --- definitions -----------------------------------------------------------------------
    async def ensure_definition(self, api: ConductorApi, plan: ExecutionPlan,
                                plan_sha256: str) -> tuple[str, int]:
        """The (name, version) of the definition for this plan, registering a new version
        only when no existing version was generated from the same plan bytes and mapping."""
        name = workflow_name(plan.metadata.plan_id, self.mapping.task_prefix)
        digest = definition_digest(plan_sha256, self.mapping)
        if digest in self._definitions:
            return name, self._definitions[digest]
        await self._register_task_types(api, step_task_types(plan, self.mapping))
        latest = await api.run(api.get_workflow_def, name)
        version = 1
        if latest is not None:
            top = int(latest.get("version") or 1)
            for candidate in range(top, max(0, top - _VERSION_SEARCH_LIMIT), -1):
                found: dict[str, Any] | None = latest
                if candidate != top:
                    found = await api.run(api.get_workflow_def, name, candidate)
                if found is not None and digest_of_definition(found) == digest:
                    self._definitions[digest] = candidate
                    return name, candidate
            version = top + 1
        definition = workflow_definition(plan, plan_sha256=plan_sha256, version=version,
                                         options=self.mapping)
        try:
            await api.run(api.create_workflow_def, definition)
        except ConductorApiError as exc:
            # Another process registered this version first: use it if it is ours.
            registered: dict[str, Any] | None = await api.run(api.get_workflow_def, name,
                                                              version)
            if registered is None or digest_of_definition(registered) != digest:
                raise EngineUnavailable(f"cannot register definition {name} v{version}: {exc}",
                                        retryable=True) from exc
        self._definitions[digest] = version
        return name, version

    # --- the port: start -------------------------------------------------------------------
    def run_ref_for(self, header: RunHeader) -> EngineRunRef:
        """The reference of a run; the Conductor workflow id is filled once it is known."""
        coordinator = self._coordinator
        ctx = coordinator._contexts.get((header.tenant_id, header.run_id)) if coordinator else None
        return ConductorRunRef(server_url=self.server_url or "",
                               workflow_id=(ctx.workflow_id if ctx else None) or "",
                               run_id=header.run_id)

    async def start_run(self, plan_ref: Any, context: DvtRunContext) -> EngineRunRef:
        """Register the run once, then start (or find) its Conductor workflow.

        A repeated request answers with the first request's workflow, and repairs a first
        start that stopped half-way (workflow never started, or gates never opened).
        """
        coordinator = await self.coordinator()
        ref = await super().start_run(plan_ref, context)
        if not isinstance(ref, ConductorRunRef) or not ref.run_id or ref.workflow_id:
            return ref
        tenant_id = (context.tenant_id if isinstance(context, DvtRunContext)
                     else DvtRunContext.model_validate(context).tenant_id)
        ctx = await coordinator.context(tenant_id, ref.run_id)
        if ctx is None:
            return ref
        if await coordinator.workflow_id(ctx) is None:
            snap = await coordinator._snapshot(ctx)
            ready = snap.status == RunStatus.APPROVED or (
                snap.status == RunStatus.PENDING and not ctx.header.requires_approval)
            return await self.launch(ctx.header, ctx.plan) if ready else ref
        await coordinator.reconcile(ctx, force=True)
        return coordinator.run_ref(ctx)

    async def launch(self, header: RunHeader, plan: ExecutionPlan) -> EngineRunRef:
        """Start the run's workflow (once), write RunStarted and open the first gates."""
        coordinator = await self.coordinator()
        api = coordinator.api
        name, version = await self.ensure_definition(api, plan, header.plan_ref.sha256)
        ctx = RunContext(header, plan, name)
        coordinator.remember(ctx)
        existing = await coordinator.workflow_id(ctx)
        if existing is None:
            request = {
                "name": name,
                "version": version,
                "correlationId": correlation_id(header),
                "input": {"tenantId": header.tenant_id, "projectId": header.project_id,
                          "environmentId": header.environment_id, "runId": header.run_id},
                # Orkes honours this key (OSS ignores it; the store's registration and the
                # correlation lookup above keep OSS starts idempotent).
                "idempotencyKey": header.run_request_key,
                "idempotencyStrategy": "RETURN_EXISTING",
                "taskToDomain": {},
            }
            ctx.workflow_id = await api.run(api.start_workflow, request)
        await coordinator.write_run_started(ctx)
        if any((is_gate(s) or s.when is not None) and not s.depends_on for s in plan.steps):
            # First steps start with the workflow; an approval gate among them needs its
            # StepStarted and StepAwaitingApproval written by the interpreter's first moves,
            # and a first step whose condition is false its StepSkipped (its task only parks).
            await coordinator.reconcile(ctx, force=True)
        return coordinator.run_ref(ctx)

    # --- the port: signals and cancel ------------------------------------------------------
    async def _ctx(self, tenant_id: str, run_id: str) -> tuple[RunCoordinator, RunContext, str]:
        coordinator = await self.coordinator()
        ctx = await coordinator.context(tenant_id, run_id)
        if ctx is None:
            raise RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})
        wid = await coordinator.workflow_id(ctx)
        if wid is None:
            raise RunNotFound(f"run {run_id!r} has no Conductor workflow yet",
                              details={"runId": run_id})
        return coordinator, ctx, wid

    async def apply_signal(
        self, header: RunHeader, run_ref: EngineRunRef, accepted: AcceptedSignal
    ) -> None:
        """Carry out an accepted, recorded signal with the server's own operations."""
        coordinator, ctx, wid = await self._ctx(header.tenant_id, header.run_id)
        api = coordinator.api
        kind = accepted.type
        if kind == SignalType.CANCEL:
            await self._terminate_for_cancel(coordinator, ctx, wid,
                                             accepted.payload.get("reason"))
            return
        paused_early = False
        if kind == SignalType.PAUSE:
            # Stop the server scheduling at once, before waiting for a reconcile in progress,
            # unless a RESUME decided after this PAUSE already wants the run running.
            snap = await coordinator._snapshot(ctx)
            events = await self.store.fetch_events(*ctx.key)
            if desired_state(snap, events).snapshot.status == RunStatus.PAUSED \
                    and snap.status == RunStatus.RUNNING:
                await api.run(api.pause, wid)
                paused_early = True
        async with coordinator._lock(ctx.key):
            snap = await coordinator._snapshot(ctx)
            if snap.status.is_terminal:
                return
            events = await self.store.fetch_events(*ctx.key)
            # Every signal decided up to this one and not applied yet, in decision order:
            # deliveries from two callers arrive in any order.
            due = [s for s in due_signals(snap, events, accepted.decision_run_seq)
                   if s.type != SignalType.CANCEL]
            skips = any(s.type == SignalType.SKIP_STEP for s in due)
            # The task list only where the signal acts on tasks (it is large for large plans).
            workflow = await (api.run(api.get_workflow, wid, True) if skips
                              else api.run(api.get_workflow_state, wid))
            # Steps whose start was already carried out count as running, as they do for the
            # interpreter that started them: a rejected gate must not end a failFast run
            # before a sibling that was due to start has run.
            cancelled, _ = cancel_reason_of(workflow)
            interp = await coordinator.rebuild(ctx, snap, events, cancelled=cancelled,
                                               eager=True)
            for signal in due:
                await self._apply_one(coordinator, ctx, wid, workflow, interp, signal)
            if paused_early and interp.status == RunStatus.RUNNING:
                await _resume_if_paused(api, wid)  # a later RESUME was applied first
        await coordinator.reconcile(ctx, force=True)

    async def _apply_one(self, coordinator: RunCoordinator, ctx: RunContext, wid: str,
                         workflow: dict[str, Any], interp: RunInterpreter,
                         accepted: AcceptedSignal) -> None:
        """Apply one accepted signal: the server's own operation, then the interpreter's."""
        api = coordinator.api
        kind = accepted.type
        if kind == SignalType.PAUSE and interp.status == RunStatus.RUNNING:
            await api.run(api.pause, wid)
        elif kind == SignalType.RESUME and interp.status == RunStatus.PAUSED:
            await _resume_if_paused(api, wid)
        elif kind == SignalType.SKIP_STEP and accepted.step_id in ctx.index:
            await self._skip_on_server(api, ctx, wid, workflow, accepted.step_id)
        commands: list[Command] = interp.signal_accepted(
            kind, accepted.payload, signal_id=accepted.signal_id, actor_id=accepted.actor.id,
            attempt=accepted.logical_attempt_id)
        await coordinator.execute(ctx, interp, commands, workflow, ReconcileResult())
        if kind == SignalType.RESUME:
            await coordinator.wake_parked_steps(ctx)

    async def _skip_on_server(self, api: ConductorApi, ctx: RunContext, wid: str,
                              workflow: dict[str, Any], step_id: str) -> None:
        """The server's skip of a step that never ran; a parked failed attempt is closed."""
        tasks = _tasks_by_ref(workflow)
        index = ctx.index[step_id]
        task = tasks.get(step_ref(index))
        if task is None:
            with contextlib.suppress(ConductorApiError):
                await api.run(api.skip_task, wid, step_ref(index))
        elif task.get("status") in ("SCHEDULED", "IN_PROGRESS"):
            await api.run(api.update_task, wid, task["taskId"], "COMPLETED",
                                    {"skipped": True})
        gate = tasks.get(gate_ref(index))
        if gate is not None and gate.get("status") in ("SCHEDULED", "IN_PROGRESS"):
            await api.run(api.update_task, wid, gate["taskId"], "COMPLETED",
                                    {"skipped": True})

    async def _terminate_for_cancel(self, coordinator: RunCoordinator, ctx: RunContext,
                                    wid: str, reason: Any) -> None:
        text = reason if isinstance(reason, str) else ""
        await coordinator.api.run(coordinator.api.terminate, wid, f"{CANCEL_REASON_PREFIX}{text}")
        await coordinator.reconcile(ctx, force=True)

    async def cancel_run(self, run_ref: EngineRunRef, reason: str | None = None) -> None:
        """Cancel by terminating the workflow; running steps are told, then RunCancelled."""
        if not isinstance(run_ref, ConductorRunRef) or not run_ref.run_id:
            raise RunNotFound("not a Conductor run reference",
                              details={"provider": getattr(run_ref, "provider", None)})
        coordinator = await self.coordinator()
        header = await self._header_for_ref(run_ref)
        _, ctx, wid = await self._ctx(header.tenant_id, header.run_id)
        await self._terminate_for_cancel(coordinator, ctx, wid, reason)

    async def _header_for_ref(self, run_ref: ConductorRunRef) -> RunHeader:
        coordinator = await self.coordinator()
        for (tenant, run), _ctx in list(coordinator._contexts.items()):
            if run == run_ref.run_id:
                header = await self.store.get_run(tenant, run)
                if header is not None:
                    return header
        if run_ref.workflow_id:
            workflow = await coordinator.api.run(coordinator.api.get_workflow,
                                               run_ref.workflow_id, False)
            wf_tenant = (workflow.get("input") or {}).get("tenantId")
            if wf_tenant:
                header = await self.store.get_run(str(wf_tenant), str(run_ref.run_id))
                if header is not None:
                    return header
        raise RunNotFound(f"run {run_ref.run_id!r} not found", details={"runId": run_ref.run_id})

    # --- the port: status and validation ---------------------------------------------------
    async def get_run_status(self, run_ref: EngineRunRef) -> RunStatusSnapshot:
        """The store's view of the run, with the server's workflow status as the message."""
        if not isinstance(run_ref, ConductorRunRef) or not run_ref.run_id:
            raise RunNotFound("not a Conductor run reference")
        header = await self._header_for_ref(run_ref)
        coordinator, ctx, wid = await self._ctx(header.tenant_id, header.run_id)
        snap = await coordinator._snapshot(ctx)
        workflow = await coordinator.api.run(coordinator.api.get_workflow_state, wid)
        return RunStatusSnapshot(
            run_id=header.run_id, status=snap.status, substatus=snap.substatus,
            message=f"conductor workflow {wid} {workflow.get('status')}",
            started_at=snap.started_at, completed_at=snap.completed_at,
        )

    async def validate(self, plan: ExecutionPlan) -> ValidationReport:
        """The shared report, plus warnings where the server's retries differ from the plan."""
        report = await super().validate(plan)
        issues = [
            ValidationIssue(code=RETRY_APPROXIMATED, message=text, severity="warning",
                            step_id=step_id)
            for step_id, text in mapping_warnings(plan)
        ]
        if not issues:
            return report
        return report.model_copy(update={"issues": (*report.issues, *issues)})


async def _resume_if_paused(api: ConductorApi, wid: str) -> None:
    """Resume the server's workflow unless it already runs (the server refuses that)."""
    workflow = await api.run(api.get_workflow_state, wid)
    if workflow.get("status") == "PAUSED":
        await api.run(api.resume, wid)
