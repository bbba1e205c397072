"""The ASGI layer around every request: request id, body limit, metrics and the access log.

Pure ASGI (not BaseHTTPMiddleware), so streamed responses (SSE) pass through untouched.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dvt_api.metrics import ApiMetrics
from dvt_api.problems import ApiProblem, HttpCode, problem_response
from dvt_api.run_observer import TRACE_ID

log = logging.getLogger("dvt_api")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json\s*(;.*)?$", re.IGNORECASE)


class PayloadTooLarge(ApiProblem):
    """The body passed the service's limit while it was read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, HttpCode.PAYLOAD_TOO_LARGE,
                         f"request bodies are limited to {limit} bytes")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class RequestMiddleware:
    """Assigns the request id, enforces the body limit and content type, measures, logs."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.limit = app, metrics, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap one HTTP request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = _header(scope, b"x-request-id")
        request_id = sent if sent and _REQUEST_ID.match(sent) else uuid.uuid4().hex
        trace = _TRACEPARENT.match(_header(scope, b"traceparent") or "")
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["trace_id"] = trace.group(1) if trace else None
        started = time.perf_counter()
        status = {"code": 500, "measured": False}

        def observe() -> None:
            if status["measured"]:
                return
            status["measured"] = True
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            elapsed = time.perf_counter() - started
            self.metrics.http_requests.labels(method, route, str(status["code"])).inc()
            self.metrics.http_duration.labels(method, route).observe(elapsed)
            log.info("request", extra={
                "request_id": request_id, "trace_id": state.get("trace_id"),
                "tenant_id": state.get("tenant_id"), "key_id": state.get("key_id"),
                "method": method, "route": route, "status": status["code"],
                "duration_ms": round(elapsed * 1000, 2)})

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
                observe()
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await problem_response(_Req(scope), refusal)(scope, receive, send_wrapper)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise PayloadTooLarge(self.limit)
            return message

        # Tasks the request starts (an in-process run) inherit it: their run logs carry it.
        token = TRACE_ID.set(state["trace_id"])
        try:
            await self.app(scope, limited_receive, send_wrapper)
        except PayloadTooLarge as exc:  # read outside a route (e.g. by the framework)
            await problem_response(_Req(scope), exc)(scope, receive, send_wrapper)
        finally:
            TRACE_ID.reset(token)
            observe()

    def _refusal(self, scope: Scope) -> ApiProblem | None:
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return PayloadTooLarge(self.limit)
        if scope["method"] in ("POST", "PUT", "PATCH") and scope["path"].startswith("/v1/"):
            ctype = _header(scope, b"content-type")
            has_body = length not in (None, "0") or _header(scope, b"transfer-encoding")
            if has_body and not (ctype and _JSON_TYPE.match(ctype)):
                return ApiProblem(415, HttpCode.UNSUPPORTED_MEDIA_TYPE,
                                  "send the request body as application/json")
        return None


class _Req:
    """Just enough of a Request for problem_response (the scope's request id)."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
