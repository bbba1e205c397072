"""dvt: run data and ops pipelines durably on real workflow engines through one engine port."""

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
from dvt_engine.plugins import open_engine, open_store

__version__ = "0.1.0"

__all__ = [
    "DvtError",
    "EngineError",
    "ErrorCode",
    "PlanError",
    "RequestError",
    "RunError",
    "SignalError",
    "StepError",
    "StoreError",
    "__version__",
    "open_engine",
    "open_store",
]
