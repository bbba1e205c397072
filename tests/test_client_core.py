"""dvt_client's pure parts: Retry-After, retry decisions, SSE parsing, request bodies."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from dvt_client import ApiError, Conflict, NotFound, RetryPolicy, ServerError
from dvt_client._core import SseParser, error_of, retry_after, retry_wait, run_body


def _answer(status: int, headers: dict[str, str] | None = None,
            body: object = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, json=body)


def _problem(code: str, status: int) -> dict[str, object]:
    return {"type": f"urn:dvt:error:{code}", "title": "t", "status": status, "detail": "d",
            "code": code, "instance": "req-1"}


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after(_answer(503, {"Retry-After": "7"})) == 7.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after(_answer(503, {"Retry-After": later})) or 0) <= 30
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert retry_after(_answer(503, {"Retry-After": past})) == 0.0
    assert retry_after(_answer(503, {"Retry-After": "soon"})) is None
    assert retry_after(_answer(503)) is None


def test_only_429_503_and_a_request_in_flight_are_retried() -> None:
    policy = RetryPolicy(max_attempts=3, max_retry_after_s=60)
    assert retry_wait(_answer(503, {"Retry-After": "2"}), policy, 1) == 2.0
    assert retry_wait(_answer(429, {"Retry-After": "60"}), policy, 2) == 60.0
    assert retry_wait(_answer(429, {"Retry-After": "61"}), policy, 1) is None  # too long
    assert retry_wait(_answer(503, {"Retry-After": "1"}), policy, 3) is None  # attempts used
    in_use = _answer(409, {"Retry-After": "1"}, _problem("IDEMPOTENCY_KEY_IN_USE", 409))
    assert retry_wait(in_use, policy, 1) == 1.0
    assert retry_wait(_answer(409, body=_problem("RUN_TERMINAL", 409)), policy, 1) is None
    assert retry_wait(_answer(500), policy, 1) is None
    backoff = retry_wait(_answer(503), policy, 2)
    assert backoff is not None
    assert 0 <= backoff <= 1.0  # full jitter under 0.5 * 2


def test_problems_become_typed_errors_with_their_code() -> None:
    error = error_of(_answer(404, body={**_problem("RUN_NOT_FOUND", 404),
                                        "errors": [{"path": "p", "message": "m"}]}))
    assert isinstance(error, NotFound)
    assert (error.code, error.status, error.request_id) == ("RUN_NOT_FOUND", 404, "req-1")
    assert error.errors[0].path == "p"
    assert isinstance(error_of(_answer(409, body=_problem("RUN_TERMINAL", 409))), Conflict)
    odd = error_of(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(odd, ServerError)
    assert isinstance(odd, ApiError)
    assert odd.code == "HTTP_502"


def test_sse_parser_joins_data_lines_and_skips_comments() -> None:
    parser = SseParser()
    lines = [": hello", "retry: 2000", "", "id: 1", "event: RunStarted", "data: {\"a\":",
             "data: 1}", "", "id: 2", "data:x", ""]
    messages = list(parser.messages(lines))
    assert [(m.id, m.event, m.data) for m in messages] == [
        ("1", "RunStarted", "{\"a\":\n1}"), ("2", None, "x")]
    assert parser.retry_ms == 2000


def test_run_body_needs_exactly_one_plan() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        run_body(None, None, None, None, None, None)
    with pytest.raises(ValueError, match="exactly one"):
        run_body({"a": 1}, "f" * 64, None, None, None, None)
    assert run_body(b'{"a": 1}', None, "r", {"x": 1}, {"t": "v"}, None) == {
        "plan": {"a": 1}, "runId": "r", "inputs": {"x": 1}, "labels": {"t": "v"}}
    assert run_body(None, "f" * 64, None, None, None, "reference") == {
        "planRef": {"sha256": "f" * 64}, "engine": "reference"}
