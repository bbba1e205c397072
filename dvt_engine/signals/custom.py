"""Custom signals (plan v1.3) in the signal service: the declared type, its payload schema, its
roles, and the waiting step a signal completes. See docs/signals.md, "Custom signals"."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from dvt_engine.errors import PlanNotFound, SignalInvalidPayload, SignalUnknown
from dvt_engine.models.plan import ExecutionPlan, SignalDeclaration
from dvt_engine.models.run import RunHeader
from dvt_engine.models.signals import Role
from dvt_engine.ports import RunStateStore
from dvt_engine.rules.signals import payload_errors

PlanSource = Callable[[RunHeader], Awaitable[ExecutionPlan]]
#: Parsed plans kept per service, by sha256 (a run's plan never changes).
_PLAN_CACHE_SIZE = 64


class RunPlans:
    """The plans of runs, read once per plan digest from a source (an engine's plan loader)
    or else from the store's plan registry."""

    def __init__(self, store: RunStateStore, source: PlanSource | None = None) -> None:
        self.store = store
        self.source = source
        self._cache: dict[str, ExecutionPlan] = {}

    async def of(self, header: RunHeader) -> ExecutionPlan:
        """The run's plan."""
        digest = header.plan_ref.sha256
        plan = self._cache.get(digest)
        if plan is None:
            plan = await self._load(header)
            if len(self._cache) >= _PLAN_CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[digest] = plan
        return plan

    async def _load(self, header: RunHeader) -> ExecutionPlan:
        if self.source is not None:
            return await self.source(header)
        # Imported here: the planning package is heavier than the signal rules need elsewhere.
        from dvt_engine.planning.first_error import validate_plan_document

        data = await self.store.get_plan(header.plan_ref.sha256)
        if data is None:
            raise PlanNotFound(f"the plan of run {header.run_id!r} is not in the registry",
                               details={"runId": header.run_id})
        return validate_plan_document(data)


def declaration(plan: ExecutionPlan, name: str) -> SignalDeclaration:
    """The plan's declaration of custom signal ``name``; SIGNAL_UNKNOWN when it has none."""
    declared = plan.metadata.signals or {}
    found = declared.get(name)
    if found is None:
        raise SignalUnknown(
            f"the run's plan declares no signal {name!r}",
            details={"signalType": "CUSTOM", "name": name, "declared": sorted(declared)},
        )
    return found


def check_data(name: str, decl: SignalDeclaration, data: dict[str, Any]) -> None:
    """Raise SIGNAL_INVALID_PAYLOAD when ``data`` breaks the declared payload schema."""
    errors = payload_errors(decl.payload, data)
    if errors:
        raise SignalInvalidPayload(
            f"the payload of signal {name!r} does not match its schema",
            details={"signalType": "CUSTOM", "name": name, "errors": errors},
        )


def required_roles(decl: SignalDeclaration) -> tuple[Role, ...]:
    """The roles the plan allows to send the signal."""
    return tuple(Role(r) for r in decl.allowed_roles)
