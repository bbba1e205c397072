"""TemporalEngine: the WorkflowEngine port on Temporal (contract §8.1)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import (
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from dvt_adapters_temporal import search_attributes
from dvt_adapters_temporal.activities import TemporalActivities
from dvt_adapters_temporal.settings import TemporalSettings, connect
from dvt_adapters_temporal.wire import (
    SIGNAL_NAME,
    STATUS_QUERY,
    RunInput,
    SignalMessage,
    WorkflowConfig,
)
from dvt_adapters_temporal.worker import build_workers, running_workers, select_workers, serve
from dvt_adapters_temporal.workflow_body import WORKFLOW_NAME
from dvt_engine.artifacts import ArtifactStore
from dvt_engine.engine_base import BaseEngine
from dvt_engine.errors import EngineUnavailable, RunNotFound, UsageError
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.run import (
    EngineRunRef,
    RunContext,
    RunHeader,
    RunStatus,
    RunStatusSnapshot,
    RunSubstatus,
    TemporalRunRef,
)
from dvt_engine.planning.capabilities import TEMPORAL_CAPABILITIES
from dvt_engine.planning.fetch import UriPolicy
from dvt_engine.planning.validation import raise_for_report
from dvt_engine.ports import Authorizer, PlanFetcher, RunStateStore, SecretsProvider
from dvt_engine.signals.service import AcceptedSignal
from dvt_engine.steps.registry import HandlerRegistry
from dvt_engine.steps.runner import StepRunner
from dvt_engine.stores.memory import MemoryRunStateStore

WORKFLOW_ID_PREFIX = "dvt-run-"
# Ask the server to hand the run's first workflow task back with the start when this process
# hosts a worker for the queue (the SDK asks only then): one task-queue round trip less.
EAGER_START = True

_log = logging.getLogger("dvt.temporal")

# Contract §9, declared once in the shared capability table.
CAPABILITIES = TEMPORAL_CAPABILITIES


def workflow_id_for(run_request_key: str) -> str:
    """The workflow id of a run: derived from its run-request key, so a repeat finds it."""
    return WORKFLOW_ID_PREFIX + run_request_key


#: How long a readiness probe waits for the frontend.
READY_TIMEOUT_S = 2.0


class TemporalEngine(BaseEngine):
    """Runs plans on a Temporal cluster through one generic interpreter workflow.

    ``TemporalEngine(store, settings=TemporalSettings(address=...))``, or the same settings as
    keyword options (``open_engine("temporal", store=..., address=..., namespace=...)``).
    Without an address the first connection raises ENGINE_NOT_CONFIGURED: the library never
    starts a server (`dvt dev up`, the CLI's local path and the test fixtures do that).
    With ``worker=True`` (the default) the engine also hosts workers in-process; `dvt worker
    --engine temporal` hosts them elsewhere.
    """

    # The workflow id derives from the run-request key, so re-issuing a start is harmless.
    relaunch_on_repeat = True

    name: ClassVar[str] = "temporal"
    capabilities: ClassVar[frozenset[str]] = CAPABILITIES

    def __init__(
        self,
        store: RunStateStore,
        *,
        settings: TemporalSettings | None = None,
        worker: bool | None = None,
        registry: HandlerRegistry | None = None,
        authorizer: Authorizer | None = None,
        secrets: SecretsProvider | None = None,
        uri_policy: UriPolicy | None = None,
        fetchers: dict[str, PlanFetcher] | None = None,
        signal_rate_limit_per_minute: int | None = None,
        artifacts: ArtifactStore | None = None,
        **options: Any,
    ) -> None:
        if settings is None:
            settings = TemporalSettings.from_options(**options)
        elif options:
            raise UsageError("pass either settings= or keyword options, not both",
                             details={"options": sorted(options)})
        if signal_rate_limit_per_minute is None:
            signal_rate_limit_per_minute = settings.signal_rate_limit_per_minute
        super().__init__(
            store, registry=registry, authorizer=authorizer, secrets=secrets,
            uri_policy=uri_policy, fetchers=fetchers,
            signal_rate_limit_per_minute=signal_rate_limit_per_minute, artifacts=artifacts,
        )
        if "task_queue" not in settings.model_fields_set and isinstance(
            store, MemoryRunStateStore
        ):
            # A process-local store: another process polling the shared default queue would
            # run this process's steps against a store it cannot see.
            settings = settings.model_copy(
                update={"task_queue": f"dvt-local-{socket.gethostname()}-{os.getpid()}"}
            )
        self.settings = settings
        self.runner = StepRunner(store, self.registry, secrets=self.secrets,
                                 artifacts=self.artifacts)
        self._embedded_worker = settings.worker if worker is None else worker
        self.eager_start = EAGER_START
        self._client: Client | None = None
        self._workers: list[Worker] = []
        self._workers_cm: Any = None
        self._search_attrs: tuple[str, ...] | None = None
        self._lock = asyncio.Lock()

    # --- connection ----------------------------------------------------------------------
    async def client(self) -> Client:
        """The connected client (connecting, and starting embedded workers, on first use)."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                client = await connect(self.settings)
                if self._embedded_worker:
                    await self._start_workers(client)
                self._client = client
        return self._client

    async def check_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Raise EngineUnavailable unless the frontend answers a health check in ``timeout_s``."""
        try:
            # Connecting is part of readiness: a service that never reached Temporal is not
            # ready either. The bound keeps a black-holed address from holding the probe.
            client = await asyncio.wait_for(self.client(), timeout_s)
            healthy = await client.service_client.check_health(
                timeout=timedelta(seconds=timeout_s))
        except (TimeoutError, RPCError, RuntimeError, OSError) as exc:
            raise EngineUnavailable(f"Temporal at {self.settings.address} does not answer",
                                    details={"reason": type(exc).__name__}) from exc
        if not healthy:
            raise EngineUnavailable(f"Temporal at {self.settings.address} reports unhealthy")

    def activities(self) -> TemporalActivities:
        """The activity implementations bound to this engine's store, runner and plan loader."""
        return TemporalActivities(self.store, self.runner, self.checked_plan)

    async def checked_plan(self, plan_ref: PlanRef) -> ExecutionPlan:
        """Fetch and check a plan again inside the workflow (URI, integrity, schema, kinds)."""
        plan = (await self.plan_loader.load(plan_ref)).plan
        raise_for_report(await self.validate(plan))
        return plan

    async def _start_workers(self, client: Client) -> None:
        self._workers = build_workers(
            client,
            self.activities(),
            task_queue=self.settings.task_queue,
            activity_queues=self.settings.routed_queues(),
            max_cached_workflows=self.settings.max_cached_workflows,
        )
        self._workers_cm = running_workers(self._workers)
        await self._workers_cm.__aenter__()

    async def serve_workers(
        self,
        *,
        stop: asyncio.Event | None = None,
        queues: Sequence[str] | None = None,
        workflows: bool = True,
    ) -> None:
        """Host this engine's workers until `stop` (or SIGINT/SIGTERM); used by `dvt worker`."""
        client = await self.client()
        pool = select_workers(
            client, self.activities(), main_queue=self.settings.task_queue,
            kind_queues=self.settings.routed_queues(), queues=queues,
            workflows=workflows, max_cached_workflows=self.settings.max_cached_workflows,
        )
        await serve(pool, stop=stop)

    async def close(self) -> None:
        """Stop embedded workers (letting running activities finish)."""
        if self._workers_cm is not None:
            cm, self._workers_cm = self._workers_cm, None
            await cm.__aexit__(None, None, None)

    async def _search_attributes(self, client: Client) -> tuple[str, ...]:
        setting = self.settings.search_attributes
        if setting is False:
            return ()
        if self._search_attrs is None:
            try:
                resp = await client.operator_service.list_search_attributes(
                    ListSearchAttributesRequest(namespace=client.namespace)
                )
                self._search_attrs = tuple(
                    n for n in search_attributes.SEARCH_ATTRIBUTE_NAMES
                    if resp.custom_attributes.get(n) == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                )
            except RPCError:
                # Hosted clusters may refuse the operator API; then dvt sets none.
                self._search_attrs = ()
        return self._search_attrs

    # --- the port ------------------------------------------------------------------------
    def _config(self) -> WorkflowConfig:
        s = self.settings
        return WorkflowConfig(
            task_queue=s.task_queue,
            kind_queues=dict(s.kind_queues),
            class_queues=dict(s.class_queues),
            continue_as_new_after_steps=s.continue_as_new_after_steps,
            continue_as_new_history_bytes=s.continue_as_new_history_bytes,
            cancel_in_flight_on_pause=s.cancel_in_flight_on_pause,
            heartbeat_timeout_s=s.heartbeat_timeout_s,
            default_step_timeout_s=s.default_step_timeout_s,
        )

    def run_ref_for(self, header: RunHeader) -> EngineRunRef:
        """The workflow of a run: its id derives from the run-request key."""
        return TemporalRunRef(
            namespace=self.settings.namespace,
            workflow_id=workflow_id_for(header.run_request_key),
            task_queue=self.settings.task_queue,
        )

    async def launch(self, header: RunHeader, plan: ExecutionPlan) -> EngineRunRef:
        """Start (or find) the interpreter workflow of a registered run."""
        client = await self.client()
        ref = self.run_ref_for(header)
        assert isinstance(ref, TemporalRunRef)
        wf_id = ref.workflow_id
        context = RunContext(
            tenant_id=header.tenant_id, project_id=header.project_id,
            environment_id=header.environment_id, run_id=header.run_id,
            run_request_id=header.run_request_id, triggered_by=header.triggered_by,
            original_run_id=header.original_run_id, params=header.params,
        )
        plan_ref = header.plan_ref
        search = search_attributes.ownership_attributes(
            context.tenant_id, context.project_id, context.environment_id,
            registered=await self._search_attributes(client))
        inp = RunInput(
            plan_ref=plan_ref.model_dump(mode="json", by_alias=True, exclude_none=True),
            context=context.model_dump(mode="json", by_alias=True, exclude_none=True),
            engine_run_ref=ref.model_dump(mode="json", by_alias=True, exclude_none=True),
            config=self._config(),
        )
        try:
            handle = await client.start_workflow(
                WORKFLOW_NAME,
                inp,
                id=wf_id,
                task_queue=self.settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=search,
                memo={"runId": context.run_id, "tenantId": context.tenant_id},
                request_eager_start=self.eager_start,
            )
            run_id = handle.first_execution_run_id or handle.result_run_id
        except WorkflowAlreadyStartedError as exc:
            run_id = exc.first_run_id or exc.run_id
        except RPCError as exc:
            raise EngineUnavailable(f"Temporal refused the start: {exc}", retryable=True) from exc
        return ref.model_copy(update={"run_id": run_id})

    def _handle(self, client: Client, run_ref: EngineRunRef) -> WorkflowHandle[Any, Any]:
        if not isinstance(run_ref, TemporalRunRef):
            raise RunNotFound(f"not a Temporal run reference: {run_ref!r}")
        # No run id: signals and queries follow the chain across continue-as-new.
        return client.get_workflow_handle(run_ref.workflow_id)

    async def deliver(self, run_ref: EngineRunRef, message: SignalMessage) -> None:
        """Hand an accepted signal to the workflow (durably recorded in its history)."""
        client = await self.client()
        try:
            await self._handle(client, run_ref).signal(SIGNAL_NAME, message)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                # The workflow ended between the decision and its delivery: the run is terminal
                # and would ignore the signal anyway; the decision record stays as written.
                _log.info("signal %s not delivered: the run's workflow has ended",
                          message.signal_id)
                return
            raise EngineUnavailable(f"cannot signal the run: {exc}", retryable=True) from exc

    async def query_status(self, run_ref: EngineRunRef) -> dict[str, Any]:
        """The workflow's own status answer (query), for diagnosis."""
        client = await self.client()
        result: dict[str, Any] = await self._handle(client, run_ref).query(STATUS_QUERY)
        return result

    async def get_run_status(self, run_ref: EngineRunRef) -> RunStatusSnapshot:
        """The engine's view of a run: the workflow's query answer, or its close status."""
        client = await self.client()
        handle = self._handle(client, run_ref)
        try:
            desc = await handle.describe()
        except RPCError as exc:
            raise RunNotFound(f"no workflow {handle.id}: {exc}") from exc
        run_id = str(await desc.memo_value("runId", handle.id))
        if desc.status == WorkflowExecutionStatus.RUNNING:
            try:
                q = await self.query_status(run_ref)
            except Exception as exc:  # no worker to answer: report what the server knows
                return RunStatusSnapshot(run_id=run_id, status=RunStatus.RUNNING,
                                         message=f"query unanswered: {exc}",
                                         started_at=desc.start_time)
            status = q["status"] if q["status"] in RunStatus.__members__ else "RUNNING"
            sub = q.get("substatus")
            return RunStatusSnapshot(
                run_id=run_id, status=RunStatus(status),
                substatus=RunSubstatus(str(sub)) if sub in RunSubstatus.__members__ else None,
                started_at=desc.start_time,
            )
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            result = await handle.result()
            status = str(result.get("status") if isinstance(result, Mapping) else
                         getattr(result, "status", "COMPLETED"))
            return RunStatusSnapshot(run_id=run_id, status=RunStatus(status),
                                     started_at=desc.start_time, completed_at=desc.close_time)
        closed = {
            WorkflowExecutionStatus.CANCELED: RunStatus.CANCELLED,
            WorkflowExecutionStatus.TERMINATED: RunStatus.CANCELLED,
        }.get(desc.status, RunStatus.FAILED)  # type: ignore[arg-type]
        return RunStatusSnapshot(run_id=run_id, status=closed, message=str(desc.status),
                                 started_at=desc.start_time, completed_at=desc.close_time)


    async def apply_signal(
        self, header: RunHeader, run_ref: EngineRunRef, accepted: AcceptedSignal
    ) -> None:
        """Deliver an accepted, recorded signal to the run's workflow."""
        ref = self.run_ref_for(header)
        await self.deliver(ref, SignalMessage(
            signal_id=accepted.signal_id, type=str(accepted.type),
            payload=dict(accepted.payload), actor_id=accepted.actor.id,
            effective_role=str(accepted.effective_role) if accepted.effective_role else None,
            decision_seq=accepted.decision_run_seq, previous_seq=accepted.previous_signal_seq,
            attempt=accepted.logical_attempt_id, failed_steps=dict(accepted.failed_steps),
        ))

    async def cancel_run(self, run_ref: EngineRunRef, reason: str | None = None) -> None:
        """Cancel cooperatively: running steps are asked to stop, then RunCancelled."""
        await self.deliver(run_ref, SignalMessage(
            signal_id=f"engine-cancel-{uuid.uuid4()}", type="CANCEL",
            payload={"reason": reason} if reason else {}, actor_id="engine",
        ))


async def run_worker(
    store: RunStateStore,
    *,
    queues: Sequence[str] | None = None,
    workflows: bool = True,
    stop: asyncio.Event | None = None,
    **engine_options: Any,
) -> None:
    """`dvt worker --engine temporal`: host workflows and steps until SIGINT/SIGTERM.

    Without ``queues`` the worker serves the main task queue (the interpreter workflow and every
    step not routed elsewhere) and each queue of ``kind_queues``. With ``queues`` it serves only
    those step queues (activities only), e.g. a worker for ``spark.submit`` steps on its own
    machine. Shutdown is graceful: no new task is taken and running steps get time to finish.
    """
    engine = TemporalEngine(store, worker=False, **engine_options)
    try:
        await engine.serve_workers(stop=stop, queues=queues, workflows=workflows)
    finally:
        await engine.close()
