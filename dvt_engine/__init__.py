"""dvt: run data and ops pipelines durably on real workflow engines through one engine port.

Everything a host needs is importable from here::

    from dvt_engine import Client, HandlerRegistry, MemoryStoreSettings, PlanBuilder, ...

Only the error classes load eagerly; every other name loads on first use, so importing one
light submodule (as Temporal's workflow sandbox does) never pulls in the client, the plan
fetchers or their network modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dvt_engine.errors import (
    DvtError,
    EngineError,
    ErrorCode,
    PlanError,
    RequestError,
    RunError,
    SignalError,
    StepError,
    StoreError,
)

if TYPE_CHECKING:
    from dvt_engine.artifacts import ArtifactStore
    from dvt_engine.builder import PlanBuilder
    from dvt_engine.client import Client, PlanInput, RunHandle, RunPage
    from dvt_engine.models.events import Event, EventType
    from dvt_engine.models.plan import ExecutionPlan, PlanRef, RetryPolicy
    from dvt_engine.models.run import RunStatus, RunSummary
    from dvt_engine.models.signals import (
        Actor,
        ApproveRunPayload,
        ApproveStepPayload,
        CancelPayload,
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
    from dvt_engine.models.snapshot import ArtifactRef, RunSnapshot, StepSnapshot
    from dvt_engine.plugins import open_artifact_store, open_engine, open_store
    from dvt_engine.ports import StepContext, StepHandler, StepResult
    from dvt_engine.settings import (
        ArtifactStoreSettings,
        ConductorSettings,
        EngineSettings,
        MemoryStoreSettings,
        PostgresStoreSettings,
        ReferenceSettings,
        StoreSettings,
        TemporalSettings,
        TlsSettings,
    )
    from dvt_engine.signals.rejections import raise_for_rejection
    from dvt_engine.steps.registry import (
        HandlerRegistry,
        builtin_registry,
        default_registry,
        step_handler,
    )

_LAZY: dict[str, str] = {
    "Actor": "dvt_engine.models.signals",
    "ApproveRunPayload": "dvt_engine.models.signals",
    "ApproveStepPayload": "dvt_engine.models.signals",
    "ArtifactRef": "dvt_engine.models.snapshot",
    "ArtifactStore": "dvt_engine.artifacts",
    "ArtifactStoreSettings": "dvt_engine.settings",
    "CancelPayload": "dvt_engine.models.signals",
    "Client": "dvt_engine.client",
    "ConductorSettings": "dvt_engine.settings",
    "EngineSettings": "dvt_engine.settings",
    "Event": "dvt_engine.models.events",
    "EventType": "dvt_engine.models.events",
    "ExecutionPlan": "dvt_engine.models.plan",
    "HandlerRegistry": "dvt_engine.steps.registry",
    "MemoryStoreSettings": "dvt_engine.settings",
    "PausePayload": "dvt_engine.models.signals",
    "PlanBuilder": "dvt_engine.builder",
    "PlanInput": "dvt_engine.client",
    "PlanRef": "dvt_engine.models.plan",
    "PostgresStoreSettings": "dvt_engine.settings",
    "ReferenceSettings": "dvt_engine.settings",
    "ResumePayload": "dvt_engine.models.signals",
    "RetryPolicy": "dvt_engine.models.plan",
    "RetryRunPayload": "dvt_engine.models.signals",
    "RetryStepPayload": "dvt_engine.models.signals",
    "Role": "dvt_engine.models.signals",
    "RunHandle": "dvt_engine.client",
    "RunPage": "dvt_engine.client",
    "RunSnapshot": "dvt_engine.models.snapshot",
    "RunStatus": "dvt_engine.models.run",
    "RunSummary": "dvt_engine.models.run",
    "SignalDecision": "dvt_engine.models.signals",
    "SignalPayload": "dvt_engine.models.signals",
    "SignalRequest": "dvt_engine.models.signals",
    "SignalType": "dvt_engine.models.signals",
    "SkipStepPayload": "dvt_engine.models.signals",
    "StepContext": "dvt_engine.ports",
    "StepHandler": "dvt_engine.ports",
    "StepResult": "dvt_engine.ports",
    "StepSnapshot": "dvt_engine.models.snapshot",
    "StoreSettings": "dvt_engine.settings",
    "TemporalSettings": "dvt_engine.settings",
    "TlsSettings": "dvt_engine.settings",
    "builtin_registry": "dvt_engine.steps.registry",
    "default_registry": "dvt_engine.steps.registry",
    "open_artifact_store": "dvt_engine.plugins",
    "open_engine": "dvt_engine.plugins",
    "open_store": "dvt_engine.plugins",
    "raise_for_rejection": "dvt_engine.signals.rejections",
    "step_handler": "dvt_engine.steps.registry",
}

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ApproveRunPayload",
    "ApproveStepPayload",
    "ArtifactRef",
    "ArtifactStore",
    "ArtifactStoreSettings",
    "CancelPayload",
    "Client",
    "ConductorSettings",
    "DvtError",
    "EngineError",
    "EngineSettings",
    "ErrorCode",
    "Event",
    "EventType",
    "ExecutionPlan",
    "HandlerRegistry",
    "MemoryStoreSettings",
    "PausePayload",
    "PlanBuilder",
    "PlanError",
    "PlanInput",
    "PlanRef",
    "PostgresStoreSettings",
    "ReferenceSettings",
    "RequestError",
    "ResumePayload",
    "RetryPolicy",
    "RetryRunPayload",
    "RetryStepPayload",
    "Role",
    "RunError",
    "RunHandle",
    "RunPage",
    "RunSnapshot",
    "RunStatus",
    "RunSummary",
    "SignalDecision",
    "SignalError",
    "SignalPayload",
    "SignalRequest",
    "SignalType",
    "SkipStepPayload",
    "StepContext",
    "StepError",
    "StepHandler",
    "StepResult",
    "StepSnapshot",
    "StoreError",
    "StoreSettings",
    "TemporalSettings",
    "TlsSettings",
    "__version__",
    "builtin_registry",
    "default_registry",
    "open_artifact_store",
    "open_engine",
    "open_store",
    "raise_for_rejection",
    "step_handler",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
