"""problem+json (RFC 9457) for every refusal: the core's stable codes plus the HTTP ones.

Bodies carry the code, a title, the status, a detail for people and the request id; never a
stack trace, SQL, a file path or a secret: 5xx answers carry a fixed detail only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, MutableMapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from dvt_engine.errors import (
    ERROR_CLASSES,
    DvtError,
    EngineError,
    ErrorCode,
    PlanError,
    RequestError,
    StoreError,
    family_of,
)

PROBLEM_TYPE = "application/problem+json"
log = logging.getLogger("dvt_api")


class HttpCode(StrEnum):
    """Codes the HTTP layer adds to the core's catalogue (docs/api.md lists them)."""

    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    REQUEST_INVALID = "REQUEST_INVALID"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    IDEMPOTENCY_KEY_MISMATCH = "IDEMPOTENCY_KEY_MISMATCH"
    IDEMPOTENCY_KEY_IN_USE = "IDEMPOTENCY_KEY_IN_USE"
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND"
    WEBHOOK_NOT_FOUND = "WEBHOOK_NOT_FOUND"
    DELIVERY_NOT_FOUND = "DELIVERY_NOT_FOUND"
    WEBHOOK_URL_NOT_ALLOWED = "WEBHOOK_URL_NOT_ALLOWED"
    WEBHOOK_DISABLED = "WEBHOOK_DISABLED"
    INTERNAL = "INTERNAL"


TITLES: dict[str, str] = {
    "UNAUTHENTICATED": "Missing or unknown API key",
    "FORBIDDEN": "The API key lacks the role this needs",
    "NOT_FOUND": "No such route",
    "METHOD_NOT_ALLOWED": "Method not allowed on this route",
    "REQUEST_INVALID": "The request does not match its schema",
    "UNSUPPORTED_MEDIA_TYPE": "Send the body as application/json",
    "PAYLOAD_TOO_LARGE": "The request body is too large",
    "IDEMPOTENCY_KEY_MISMATCH": "The Idempotency-Key was used with another request body",
    "IDEMPOTENCY_KEY_IN_USE": "A request with this Idempotency-Key is still in flight",
    "API_KEY_NOT_FOUND": "No such API key",
    "WEBHOOK_NOT_FOUND": "No such webhook",
    "DELIVERY_NOT_FOUND": "No such webhook delivery",
    "WEBHOOK_URL_NOT_ALLOWED": "The webhook URL is not a public http(s) address",
    "WEBHOOK_DISABLED": "The webhook is disabled",
    "INTERNAL": "Internal error",
}

#: HTTP status of each core code that can reach a client; others go by family (_status).
CODE_STATUS: dict[ErrorCode, int] = {
    ErrorCode.RUN_NOT_FOUND: 404,
    ErrorCode.TENANT_MISMATCH: 404,
    ErrorCode.PLAN_NOT_FOUND: 404,
    ErrorCode.SIGNAL_UNAUTHORIZED: 403,
    ErrorCode.SIGNAL_INVALID_PAYLOAD: 422,
    ErrorCode.SIGNAL_UNKNOWN: 422,
    ErrorCode.STEP_NOT_FOUND: 422,
    ErrorCode.SIGNAL_RATE_LIMITED: 429,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.QUOTA_EXCEEDED: 422,
    ErrorCode.RUN_TERMINAL: 409,
    ErrorCode.RUN_NOT_APPROVED: 409,
    ErrorCode.STEP_NOT_RETRYABLE: 409,
    ErrorCode.RUN_ALREADY_RETRIED: 409,
    ErrorCode.STEP_TERMINAL: 409,
    ErrorCode.STEP_NOT_AWAITING_APPROVAL: 409,
    ErrorCode.ILLEGAL_TRANSITION: 409,
    ErrorCode.ENGINE_NOT_FOUND: 422,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.ENGINE_UNAVAILABLE: 503,
}


def status_of(code: str) -> int:
    """The HTTP status a core error code answers with."""
    try:
        core = ErrorCode(code)
    except ValueError:
        return 500
    if core in CODE_STATUS:
        return CODE_STATUS[core]
    family = family_of(ERROR_CLASSES[core])
    if family in (PlanError, RequestError):
        return 422
    if family in (StoreError, EngineError):
        return 503
    return 409


class HasScope(Protocol):
    """A request, or anything else carrying its ASGI scope."""

    @property
    def scope(self) -> MutableMapping[str, Any]:
        """The ASGI scope."""
        ...


class ApiProblem(Exception):
    """A refusal the service answers with, as problem+json."""

    def __init__(self, status: int, code: str, detail: str, *,
                 errors: Sequence[Mapping[str, str]] = (),
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.errors = [dict(e) for e in errors]
        self.headers = dict(headers or {})


def run_not_found() -> ApiProblem:
    """The one answer for a run the tenant cannot see (missing, or another tenant's)."""
    return ApiProblem(404, ErrorCode.RUN_NOT_FOUND, "run not found")


def problem_response(request: HasScope | None, problem: ApiProblem) -> Response:
    """The problem+json response of ``problem`` for this request."""
    body: dict[str, Any] = {
        "type": f"urn:dvt:error:{problem.code}",
        "title": TITLES.get(problem.code, problem.code.replace("_", " ").capitalize()),
        "status": problem.status,
        "detail": problem.detail,
        "code": str(problem.code),
        "instance": request_id_of(request),
    }
    if problem.errors:
        body["errors"] = problem.errors
    return Response(json.dumps(body, ensure_ascii=False), status_code=problem.status,
                    media_type=PROBLEM_TYPE, headers=problem.headers)


def request_id_of(request: HasScope | None) -> str:
    """The request id the middleware assigned (also in X-Request-Id)."""
    if request is None:
        return ""
    return str(request.scope.get("state", {}).get("request_id", ""))


def from_dvt_error(error: DvtError) -> ApiProblem:
    """A core error as a problem; internals of 5xx errors stay in the log."""
    code = ErrorCode.RUN_NOT_FOUND if error.code is ErrorCode.TENANT_MISMATCH else error.code
    status = status_of(code)
    if code is ErrorCode.RUN_NOT_FOUND:
        return run_not_found()
    detail = error.message if status < 500 else TITLES["INTERNAL"] + f" ({code})"
    errors = _error_items(error.details) if status < 500 else []
    retry_after = error.details.get("retryAfterS") if isinstance(error.details, Mapping) \
        else None
    headers = {"Retry-After": str(retry_after if isinstance(retry_after, int) else 60)} \
        if status in (429, 503) else {}
    return ApiProblem(status, code, detail, errors=errors, headers=headers)


def _error_items(details: Mapping[str, Any]) -> list[dict[str, str]]:
    items: list[dict[str, str]] = []
    for item in details.get("issues") or details.get("errors") or []:
        if isinstance(item, Mapping):
            items.append({"path": str(item.get("path") or ""),
                          "message": str(item.get("message") or "")})
    return items[:100]


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on this path (Starlette names only one)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "\x00"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install(app: FastAPI) -> None:
    """Route every exception the app can meet to one problem+json answer."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        return problem_response(request, exc)

    async def on_dvt(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DvtError)
        problem = from_dvt_error(exc)
        if problem.status >= 500:
            log.warning("request refused by %s", exc.code,
                        extra={"request_id": request_id_of(request), "code": str(exc.code)})
        return problem_response(request, problem)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [{"path": "/".join(str(p) for p in e.get("loc", ())),
                   "message": str(e.get("msg", ""))} for e in exc.errors()][:100]
        return problem_response(request, ApiProblem(
            422, HttpCode.REQUEST_INVALID, "the request does not match its schema",
            errors=errors))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, ApiProblem):  # e.g. the body limit hit while parsing
            return problem_response(request, exc.__cause__)
        code = {404: HttpCode.NOT_FOUND, 405: HttpCode.METHOD_NOT_ALLOWED,
                413: HttpCode.PAYLOAD_TOO_LARGE}.get(exc.status_code, HttpCode.REQUEST_INVALID)
        status = exc.status_code if exc.status_code < 500 else 500
        if status == 400:  # a body that is not UTF-8: refused like malformed JSON
            status = 422
        headers = dict(exc.headers or {})
        if status == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return problem_response(request, ApiProblem(
            status, code, TITLES.get(code, "request refused"), headers=headers))

    async def on_any(request: Request, exc: Exception) -> Response:
        log.error("unhandled %s", type(exc).__name__,
                  extra={"request_id": request_id_of(request)}, exc_info=exc)
        return problem_response(request, ApiProblem(500, HttpCode.INTERNAL, TITLES["INTERNAL"]))

    app.add_exception_handler(ApiProblem, on_problem)
    app.add_exception_handler(DvtError, on_dvt)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_any)
