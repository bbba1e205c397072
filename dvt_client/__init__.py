"""The Python client of the dvt HTTP service (``pip install 'dvt[client]'``).

Depends on httpx and pydantic only; imports nothing else of dvt, so it installs without the
engine, the store or the service.
"""

from dvt_client._core import RetryPolicy
from dvt_client.aio import AsyncClient
from dvt_client.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    DvtClientError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    Unauthenticated,
)
from dvt_client.models import (
    EventPage,
    PlanRef,
    Problem,
    Run,
    RunEvent,
    RunList,
    SignalAnswer,
    StepSnapshot,
    ValidationReport,
)
from dvt_client.sync import Client

__all__ = [
    "ApiError", "AsyncClient", "Client", "Conflict", "ConnectionFailed", "DvtClientError",
    "EventPage", "Forbidden", "InvalidRequest", "NotFound", "PlanRef", "Problem",
    "RateLimited", "RetryPolicy", "Run", "RunEvent", "RunList", "ServerError",
    "ServiceUnavailable", "SignalAnswer", "StepSnapshot", "Unauthenticated",
    "ValidationReport",
]
