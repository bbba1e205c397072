"""dvt: run data and ops pipelines durably on real workflow engines through one engine port.

Everything a host needs is importable from here::

    from dvt_engine import Client, HandlerRegistry, MemoryStoreSettings, PlanBuilder, ...
"""

from dvt_engine.builder import PlanBuilder
from dvt_engine.client import Client, PlanInput, RunHandle, RunPage
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
from dvt_engine.models.snapshot import RunSnapshot, StepSnapshot
from dvt_engine.plugins import open_engine, open_store
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_engine.settings import (
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

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ApproveRunPayload",
    "ApproveStepPayload",
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
    "open_engine",
    "open_store",
    "raise_for_rejection",
    "step_handler",
]
