"""Refusals of the dvt service as typed exceptions carrying the stable error code."""

from __future__ import annotations

from typing import Any

from dvt_client.models import Problem


class DvtClientError(Exception):
    """Base of every error this package raises."""


class ConnectionFailed(DvtClientError):
    """The service could not be reached (after the retries the request allowed)."""


class ApiError(DvtClientError):
    """A problem+json answer: ``code`` is the stable dvt code, ``status`` the HTTP status."""

    def __init__(self, problem: Problem, retry_after: float | None = None) -> None:
        super().__init__(f"{problem.code}: {problem.detail}")
        self.problem = problem
        self.code = problem.code
        self.status = problem.status
        self.detail = problem.detail
        self.errors = problem.errors
        self.request_id = problem.instance
        self.retry_after = retry_after


class Unauthenticated(ApiError):
    """401: no valid API key."""


class Forbidden(ApiError):
    """403: the key lacks the role the request needs."""


class NotFound(ApiError):
    """404: no such run, plan, key or webhook for this tenant."""


class Conflict(ApiError):
    """409: the request conflicts with the run's state (RUN_TERMINAL, STEP_TERMINAL, ...)."""


class InvalidRequest(ApiError):
    """413, 415, 422: the request (or its plan, labels, cursor) was refused."""


class RateLimited(ApiError):
    """429: too many requests; ``retry_after`` says when to try again."""


class ServiceUnavailable(ApiError):
    """503: the service's store or engine is unavailable; ``retry_after`` says when to retry."""


class ServerError(ApiError):
    """500 or any other status the service does not document."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthenticated, 403: Forbidden, 404: NotFound, 405: InvalidRequest, 409: Conflict,
    413: InvalidRequest, 415: InvalidRequest, 422: InvalidRequest, 429: RateLimited,
    503: ServiceUnavailable,
}


def error_for(status: int, body: Any, retry_after: float | None) -> ApiError:
    """The typed exception for an error answer (a body that is not a problem gets a stand-in)."""
    try:
        problem = Problem.model_validate(body)
    except ValueError:
        problem = Problem(type="about:blank", title="HTTP error", status=status,
                          detail=str(body)[:500], code=f"HTTP_{status}", instance="")
    return _BY_STATUS.get(status, ServerError)(problem, retry_after)
