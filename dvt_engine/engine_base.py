"""BaseEngine: what every engine does the same way around its own execution.

start_run: validate the context, load the plan (URI policy, integrity, schema, DAG, kinds,
capabilities), register the run idempotently on its run-request key, then hand it to the engine.
signal: decide through the shared SignalService (validated, authorized, recorded before it is
applied), then let the engine apply accepted signals. Engines implement the abstract hooks only.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from pydantic import ValidationError

from dvt_engine import telemetry
from dvt_engine.artifacts import ArtifactStore
from dvt_engine.errors import IdentifierInvalid, RunNotFound, UsageError
from dvt_engine.eventlog import EventFactory, RunWriter, utc_now
from dvt_engine.idempotency import run_request_key
from dvt_engine.models.events import EventType
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.run import EngineRunRef, RunContext, RunHeader, RunStatus
from dvt_engine.models.signals import SignalDecision, SignalRequest, SignalType
from dvt_engine.models.validation import ValidationReport
from dvt_engine.planning.capabilities import ENGINE_CAPABILITIES
from dvt_engine.planning.fetch import PlanLoader, UriPolicy
from dvt_engine.planning.validation import build_validation_report, raise_for_report
from dvt_engine.ports import Authorizer, PlanFetcher, RunStateStore, SecretsProvider, WorkflowEngine
from dvt_engine.signals.service import AcceptedSignal, SignalService, new_run_context
from dvt_engine.steps.registry import HandlerRegistry, default_registry


class BaseEngine(WorkflowEngine):
    """Shared start/signal/validate logic; subclasses run the plan."""

    #: A repeated start request launches again. Safe when the engine's own start is idempotent
    #: (Temporal's workflow id); it heals a run registered by a caller that died before launch.
    relaunch_on_repeat: ClassVar[bool] = False

    def __init__(
        self,
        store: RunStateStore,
        *,
        registry: HandlerRegistry | None = None,
        authorizer: Authorizer | None = None,
        secrets: SecretsProvider | None = None,
        uri_policy: UriPolicy | None = None,
        fetchers: dict[str, PlanFetcher] | None = None,
        signal_rate_limit_per_minute: int | None = 60,
        clock: Callable[[], datetime] = utc_now,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.registry = registry if registry is not None else default_registry()
        self.secrets = secrets
        self.clock = clock
        self.plan_loader = PlanLoader(store, policy=uri_policy, fetchers=fetchers)
        self.signals = SignalService(
            store, authorizer, clock=clock, rate_limit_per_minute=signal_rate_limit_per_minute,
            plans=self.load_plan,
        )

    @classmethod
    def declared_capabilities(cls) -> frozenset[str]:
        """The capabilities this engine declares (contract §9)."""
        return cls.capabilities or frozenset(ENGINE_CAPABILITIES.get(cls.name, ()))

    # --- validation ---------------------------------------------------------------------
    async def validate(self, plan: ExecutionPlan) -> ValidationReport:
        """Whether ``plan`` can run on this engine, as data."""
        return build_validation_report(
            plan,
            engine=self.name,
            capabilities=self.declared_capabilities(),
            known_kinds=self.registry.kinds(),
            params_schemas=self.registry.params_schemas(),
        )

    # --- start --------------------------------------------------------------------------
    async def start_run(self, plan_ref: PlanRef, context: RunContext) -> EngineRunRef:
        """Load and check the plan, register the run once, and launch it."""
        context = checked_context(context)
        with telemetry.dvt_span(
            telemetry.SPAN_START_RUN,
            attributes={
                telemetry.ATTR_TENANT_ID: context.tenant_id,
                telemetry.ATTR_PROJECT_ID: context.project_id,
                telemetry.ATTR_ENVIRONMENT_ID: context.environment_id,
                telemetry.ATTR_RUN_ID: context.run_id,
                telemetry.ATTR_ENGINE: self.name,
            },
        ):
            header, plan, created = await self.register(plan_ref, context)
            if header.requires_approval and not await self._approved(header):
                return self.run_ref_for(header)
            if not created and not self.relaunch_on_repeat:
                return self.run_ref_for(header)
            return await self.launch(header, plan)

    async def _approved(self, header: RunHeader) -> bool:
        snapshot = await self.store.get_snapshot(header.tenant_id, header.run_id)
        return snapshot is not None and snapshot.status != RunStatus.PENDING

    async def register(
        self, plan_ref: PlanRef, context: RunContext
    ) -> tuple[RunHeader, ExecutionPlan, bool]:
        """Pre-flight the plan and register the run; idempotent on the run-request key."""
        loaded = await self.plan_loader.load(plan_ref)
        plan = loaded.plan
        raise_for_report(await self.validate(plan))
        key = run_request_key(
            context.tenant_id,
            context.project_id,
            context.environment_id,
            plan.metadata.plan_id,
            plan.metadata.plan_version,
            context.run_request_id or context.run_id,
        )
        header = RunHeader.for_plan(
            plan=plan,
            plan_ref=plan_ref,
            context=context,
            engine=self.name,
            run_request_key=key,
            created_at=self.clock(),
        )
        stored, created = await self.store.register_run(header)
        return stored, plan, created

    async def load_plan(self, header: RunHeader) -> ExecutionPlan:
        """The plan of a registered run, loaded and checked again from its reference."""
        return (await self.plan_loader.load(header.plan_ref)).plan

    # --- signals ------------------------------------------------------------------------
    async def signal(self, run_ref: EngineRunRef, request: SignalRequest) -> SignalDecision:
        """Decide a signal through the shared rules, then apply it when accepted."""
        with telemetry.dvt_span(
            telemetry.SPAN_SIGNAL,
            attributes={
                telemetry.ATTR_TENANT_ID: request.tenant_id,
                telemetry.ATTR_RUN_ID: request.run_id,
                telemetry.ATTR_SIGNAL_TYPE: str(request.type),
                telemetry.ATTR_SIGNAL_ID: request.signal_id,
                telemetry.ATTR_ENGINE: self.name,
            },
        ):
            verdict = await self.signals.decide(
                request, capabilities=self.declared_capabilities()
            )
            accepted = verdict.accepted
            if accepted is None:
                return verdict.decision
            if accepted.type == SignalType.RETRY_RUN:
                context = new_run_context(verdict.header, accepted)
                await self.start_run(verdict.header.plan_ref, context)
                return verdict.decision.model_copy(update={"new_run_id": context.run_id})
            if accepted.type == SignalType.APPROVE_RUN:
                await self._approve_run(verdict.header, accepted)
                return verdict.decision
            if accepted.type == SignalType.CANCEL and verdict.snapshot.status == RunStatus.PENDING:
                # Never launched (it waits for approval): nothing runs, so cancel it here.
                await RunWriter(self.store, verdict.header).append(
                    EventFactory(verdict.header, "operator", clock=self.clock).run_event(
                        EventType.RUN_CANCELLED,
                        {"reason": accepted.payload.get("reason")},
                        caused_by_signal_id=accepted.signal_id,
                    )
                )
                return verdict.decision
            await self.apply_signal(verdict.header, run_ref, accepted)
            return verdict.decision

    async def _approve_run(self, header: RunHeader, accepted: AcceptedSignal) -> None:
        writer = RunWriter(self.store, header)
        factory = EventFactory(header, "operator", clock=self.clock)
        payload = accepted.payload
        if payload.get("decision", "approve") == "approve":
            await writer.append(
                factory.run_event(
                    EventType.RUN_APPROVED,
                    {"approver": accepted.actor.id, "comment": payload.get("comment")},
                    caused_by_signal_id=accepted.signal_id,
                )
            )
            await self.launch(header, await self.load_plan(header))
        else:
            await writer.append(
                factory.run_event(
                    EventType.RUN_FAILED,
                    {"code": "RUN_NOT_APPROVED",
                     "message": f"run rejected by {accepted.actor.id}"},
                    caused_by_signal_id=accepted.signal_id,
                )
            )

    async def header_for(self, tenant_id: str, run_id: str) -> RunHeader:
        """The header of a run, or RUN_NOT_FOUND."""
        header = await self.store.get_run(tenant_id, run_id)
        if header is None:
            raise RunNotFound(f"run {run_id!r} not found", details={"runId": run_id})
        return header

    # --- engine hooks -------------------------------------------------------------------
    @abc.abstractmethod
    def run_ref_for(self, header: RunHeader) -> EngineRunRef:
        """The engine reference of a registered run (deterministic from the header)."""

    @abc.abstractmethod
    async def launch(self, header: RunHeader, plan: ExecutionPlan) -> EngineRunRef:
        """Begin executing a registered run; writes RunStarted once it has begun."""

    @abc.abstractmethod
    async def apply_signal(
        self, header: RunHeader, run_ref: EngineRunRef, accepted: AcceptedSignal
    ) -> None:
        """Deliver an accepted, recorded signal to the running run."""


def checked_context(context: RunContext | dict[str, Any]) -> RunContext:
    """A RunContext with every identifier validated (IDENTIFIER_INVALID otherwise)."""
    if isinstance(context, RunContext):
        return context
    try:
        return RunContext.model_validate(context)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise IdentifierInvalid(
            f"run context field {field}: {first['msg']}", details={"field": field}
        ) from exc
    except TypeError as exc:  # pragma: no cover - defensive
        raise UsageError(str(exc)) from exc
