"""What every Conductor-side process needs to act for one run: its context, its workflow, the log.

:class:`RunAccess` is the base of the coordinator: the cached run context, the Conductor workflow
of a run, step invocations and writes through the shared run writer. The coordinator's jobs are
built on it in their own modules (:mod:`~dvt_adapters_conductor.actions` carries out interpreter
commands, :mod:`~dvt_adapters_conductor.starts` answers workers' "may this step start").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dvt_adapters_conductor.api import ConductorApi
from dvt_adapters_conductor.interpreters import InterpreterCache
from dvt_adapters_conductor.mapping import chained_after, gated_positions, workflow_name
from dvt_engine.errors import IllegalTransition
from dvt_engine.eventlog import EventFactory, RunWriter
from dvt_engine.models.events import Event, EventType
from dvt_engine.models.plan import ExecutionPlan, StepSpec
from dvt_engine.models.run import ConductorRunRef, RunHeader
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore
from dvt_engine.rules.signals import is_gate
from dvt_engine.steps.runner import StepInvocation, StepRunner

logger = logging.getLogger("dvt.conductor")

ENGINE_NAME = "conductor"
CANCEL_REASON_PREFIX = "dvt:cancel:"
FINISHED_REASON_PREFIX = "dvt:finished:"

PlanLoader = Callable[[RunHeader], Awaitable[ExecutionPlan]]


@dataclass
class RunContext:
    """What every process needs to act for one run (cached per process)."""

    header: RunHeader
    plan: ExecutionPlan
    workflow_name: str
    workflow_id: str | None = None
    #: derived from the plan: each step's position, the positions of the steps that head a
    #: branch (only they have a gate), the step each other one is chained after, the approval
    #: steps
    index: dict[str, int] = field(init=False)
    gated: set[int] = field(init=False)
    after: dict[int, int] = field(init=False)
    approvals: set[str] = field(init=False)
    #: approval steps whose HUMAN task is known to be closed
    humans_settled: set[str] = field(default_factory=set)
    #: gate task ids by reference name: created with the fork, they never change
    gate_ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {s.step_id: i for i, s in enumerate(self.plan.steps)}
        self.gated = gated_positions(self.plan)
        self.after = chained_after(self.plan)
        self.approvals = {s.step_id for s in self.plan.steps if is_gate(s)}

    @property
    def key(self) -> tuple[str, str]:
        """(tenantId, runId)."""
        return (self.header.tenant_id, self.header.run_id)


@dataclass
class ReconcileResult:
    """What one reconcile did (for the caller that triggered it)."""

    opened_gates: set[str] = field(default_factory=set)
    woken_steps: set[str] = field(default_factory=set)
    snapshot: RunSnapshot | None = None
    #: gate openings not yet awaited
    pending: list[Awaitable[Any]] = field(default_factory=list)
    #: the run's next moves needed nothing of the server, so its workflow was not read: the
    #: caller looks at the workflow's status after reporting (a cancel is found there)
    deferred: bool = False


def correlation_id(header: RunHeader) -> str:
    """The Conductor correlation id of a run: its run-request key, unique per tenant.

    A bare runId would let two tenants that use the same runId find each other's workflow;
    the run-request key hashes the tenant in, and its hex form is safe in a URL path.
    """
    return header.run_request_key


def cancel_reason_of(workflow: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Whether the Conductor workflow was cancelled (terminated not by dvt's own finish)."""
    if workflow.get("status") != "TERMINATED":
        return False, None
    reason = str(workflow.get("reasonForIncompletion") or "")
    if reason.startswith(FINISHED_REASON_PREFIX):
        return False, None
    if reason.startswith(CANCEL_REASON_PREFIX):
        return True, reason[len(CANCEL_REASON_PREFIX):] or None
    # Terminated from outside dvt (UI, REST): that is a cancel too.
    return True, reason or None


def tasks_by_ref(workflow: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The latest task of every reference name (a retried task replaces its predecessor)."""
    found: dict[str, dict[str, Any]] = {}
    for task in workflow.get("tasks") or []:
        ref = task.get("referenceTaskName")
        if not ref:
            continue
        prev = found.get(ref)
        if prev is None or int(task.get("seq") or 0) >= int(prev.get("seq") or 0):
            found[ref] = task
    return found


class RunAccess:
    """Run contexts, workflows, invocations and log writes (the coordinator's base)."""

    def __init__(
        self,
        store: RunStateStore,
        api: ConductorApi,
        runner: StepRunner,
        load_plan: PlanLoader,
        *,
        task_prefix: str = "dvt",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.api = api
        self.runner = runner
        self._load_plan = load_plan
        self.task_prefix = task_prefix
        self.gate_type = f"{task_prefix}_gate"
        self.clock = clock or (lambda: datetime.now(UTC))
        self._contexts: dict[tuple[str, str], RunContext] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        #: (tenantId, runId) -> monotonic deadline of its next timer, for the sweeper
        self.timers: dict[tuple[str, str], float] = {}
        #: each run's interpreter, followed along its log (used under the run's lock)
        self.interpreters = InterpreterCache(store)

    # --- run context ---------------------------------------------------------------------
    async def context(self, tenant_id: str, run_id: str) -> RunContext | None:
        """The cached context of a run, or None when the store does not know it."""
        key = (tenant_id, run_id)
        ctx = self._contexts.get(key)
        if ctx is not None:
            return ctx
        header = await self.store.get_run(tenant_id, run_id)
        if header is None:
            return None
        plan = await self._load_plan(header)
        ctx = RunContext(header, plan, workflow_name(plan.metadata.plan_id, self.task_prefix))
        if len(self._contexts) > 5000:
            self._contexts.clear()
        self._contexts[key] = ctx
        return ctx

    def remember(self, ctx: RunContext) -> None:
        """Cache a context built by the engine at launch."""
        self._contexts[ctx.key] = ctx

    def run_ref(self, ctx: RunContext) -> ConductorRunRef:
        """The engine reference of a run."""
        return ConductorRunRef(server_url=self.api.server_url,
                               workflow_id=ctx.workflow_id or "", run_id=ctx.header.run_id)

    async def workflow_id(self, ctx: RunContext) -> str | None:
        """The Conductor workflow of a run: from RunStarted, else by its correlation id."""
        if ctx.workflow_id:
            return ctx.workflow_id
        snap = await self.store.get_snapshot(*ctx.key)
        ref = snap.engine_run_ref if snap is not None else None
        if ref and ref.get("workflowId"):
            ctx.workflow_id = str(ref["workflowId"])
            return ctx.workflow_id
        found = await self.api.run(
            self.api.find_by_correlation, ctx.workflow_name, correlation_id(ctx.header))
        if found:
            found.sort(key=lambda w: int(w.get("startTime") or 0))
            ctx.workflow_id = str(found[0]["workflowId"])
        return ctx.workflow_id

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def workflow_with_tasks(self, ctx: RunContext) -> dict[str, Any]:
        """The run's workflow with its task list (and the gate ids remembered)."""
        wid = await self.workflow_id(ctx)
        workflow = await self.api.run(self.api.get_workflow, str(wid), True)
        self._remember_gates(ctx, workflow)
        return workflow

    def _remember_gates(self, ctx: RunContext, workflow: Mapping[str, Any]) -> None:
        for task in workflow.get("tasks") or []:
            ref = str(task.get("referenceTaskName") or "")
            if ref.startswith("g") and task.get("taskType") == self.gate_type:
                ctx.gate_ids.setdefault(ref, str(task["taskId"]))

    async def _snapshot(self, ctx: RunContext) -> RunSnapshot:
        snap = await self.store.get_snapshot(*ctx.key)
        assert snap is not None
        return snap

    # --- invocations ---------------------------------------------------------------------
    def invocation(self, ctx: RunContext, step_id: str, attempt: int,
                   engine_attempt: int = 1, *, spec: StepSpec | None = None) -> StepInvocation:
        """The step runner's invocation of one attempt (``spec`` for a step the plan lacks:
        a forEach child)."""
        h = ctx.header
        return StepInvocation.for_step(
            h, spec or ctx.plan.step(step_id), plan_params={**ctx.plan.params, **h.params},
            logical_attempt_id=attempt, engine_attempt_id=engine_attempt,
        )

    # --- writing -------------------------------------------------------------------------
    async def append(self, ctx: RunContext, event: Event) -> bool:
        """Append through the state machine; False when the log refused it (someone was first)."""
        try:
            await RunWriter(self.store, ctx.header).append(event)
        except IllegalTransition as exc:
            logger.debug("run %s: %s not written: %s", ctx.header.run_id, event.event_type, exc)
            return False
        return True

    async def write_run_started(self, ctx: RunContext) -> None:
        """RunStarted, once, whichever process gets here first."""
        factory = EventFactory(ctx.header, "engine", clock=self.clock)
        ref = self.run_ref(ctx).model_dump(mode="json", by_alias=True)
        await self.append(ctx, factory.run_event(
            EventType.RUN_STARTED, {"engine": ENGINE_NAME, "engineRunRef": ref}))
