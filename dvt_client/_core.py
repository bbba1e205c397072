"""What the sync and async clients share: retry decisions, answers, SSE parsing."""

from __future__ import annotations

import email.utils
import json
import random
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from dvt_client.errors import ApiError, error_for

#: Statuses a request is sent again for (when it is safe to send again): rate limited,
#: unavailable, and an idempotent request whose first copy is still running.
RETRY_STATUSES = frozenset({429, 503})
IN_FLIGHT_CODE = "IDEMPOTENCY_KEY_IN_USE"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a safe request is retried.

    ``max_attempts`` counts every send. Without ``Retry-After`` the wait is exponential
    (``backoff_s`` doubled per attempt, at most ``max_backoff_s``) with full jitter; with it
    the wait is what the service asked for. A ``Retry-After`` longer than ``max_retry_after_s``
    is not waited out: the typed error is raised with ``retry_after`` set, for the caller to
    decide.
    """

    max_attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 120.0

    def backoff(self, attempt: int) -> float:
        """The jittered wait before send number ``attempt + 1`` (attempt counts from 1)."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


NO_RETRY = RetryPolicy(max_attempts=1)


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent or bad."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, float(when.timestamp()) - time.time())


def error_of(response: httpx.Response) -> ApiError:
    """The typed exception for an error answer (the body read already)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return error_for(response.status_code, body, retry_after(response))


def retry_wait(response: httpx.Response, policy: RetryPolicy, attempt: int) -> float | None:
    """How long to wait before sending again, or None when this answer is final."""
    if response.status_code not in RETRY_STATUSES and not (
            response.status_code == 409 and _code(response) == IN_FLIGHT_CODE):
        return None
    if attempt >= policy.max_attempts:
        return None
    asked = retry_after(response)
    if asked is None:
        return policy.backoff(attempt)
    return asked if asked <= policy.max_retry_after_s else None


def _code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def new_key() -> str:
    """A fresh idempotency key or signal id."""
    return str(uuid.uuid4())


def query(**params: Any) -> list[tuple[str, str]]:
    """Query parameters without the unset ones; lists repeat their name."""
    out: list[tuple[str, str]] = []
    for name, value in params.items():
        if value is None:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            out.append((name, item.isoformat() if hasattr(item, "isoformat") else str(item)))
    return out


def label_filters(labels: dict[str, str] | None) -> list[str] | None:
    """``key:value`` filters of a label dict."""
    return [f"{k}:{v}" for k, v in labels.items()] if labels else None


def run_body(plan: Any, plan_ref: Any, run_id: str | None, inputs: dict[str, Any] | None,
             labels: dict[str, str] | None, engine: str | None) -> dict[str, Any]:
    """The body of ``POST /v1/runs``: exactly one of a plan document and a plan reference."""
    if (plan is None) == (plan_ref is None):
        raise ValueError("give exactly one of plan and plan_ref")
    body: dict[str, Any] = {}
    if plan is not None:
        body["plan"] = json.loads(plan) if isinstance(plan, str | bytes) else plan
    else:
        sha = plan_ref if isinstance(plan_ref, str) else plan_ref.sha256
        body["planRef"] = {"sha256": sha}
    for name, value in (("runId", run_id), ("inputs", inputs), ("labels", labels),
                        ("engine", engine)):
        if value is not None:
            body[name] = value
    return body


def signal_body(kind: str, step_id: str | None, reason: str | None,
                signal_id: str, name: str | None = None,
                payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The body of ``POST /v1/runs/{runId}/signals`` (``name``/``payload``: a CUSTOM one)."""
    body: dict[str, Any] = {"type": kind, "signalId": signal_id}
    if step_id is not None:
        body["stepId"] = step_id
    if reason is not None:
        body["reason"] = reason
    if name is not None:
        body["name"] = name
    if payload is not None:
        body["payload"] = dict(payload)
    return body


@dataclass
class SseMessage:
    """One server-sent event."""

    id: str | None
    event: str | None
    data: str


class SseParser:
    """text/event-stream lines in, messages out (comments and ``retry:`` consumed)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event: str | None = None
        self._data: list[str] = []
        self.retry_ms: int | None = None

    def feed(self, line: str) -> SseMessage | None:
        """Take one line (without its end); the message it completes, if any."""
        if line == "":
            message = SseMessage(self._id, self._event, "\n".join(self._data)) \
                if self._data else None
            self._id, self._event, self._data = None, None, []
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def messages(self, lines: Iterable[str]) -> Iterator[SseMessage]:
        """Every message of ``lines``."""
        for line in lines:
            message = self.feed(line)
            if message is not None:
                yield message


#: Transport failures after which a safe request is sent again: the network, a timeout, or a
#: connection the server closed mid-answer (not a bad URL or a request httpx cannot send).
RETRYABLE_TRANSPORT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
