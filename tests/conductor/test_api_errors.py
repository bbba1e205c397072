"""How ConductorApi classifies failures: transport errors and 502/503/504 are a retryable
ENGINE_UNAVAILABLE (retried with backoff first), other answers a ConductorApiError.

Fast unit tests: a closed loopback port, and a fake HTTP server (FakeConductorHttp) that answers
a scripted list of statuses. The real server's comings and goings are in test_faults.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dvt_adapters_conductor.api import ConductorApi, ConductorApiError
from dvt_engine.errors import EngineUnavailable, ErrorCode
from dvt_local.lifecycle import free_port


class FakeConductorHttp:
    """A fake server: answers each request with the next scripted status (then 200 + JSON)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                fake.requests.append(f"{self.command} {self.path}")
                status = fake.statuses.pop(0) if fake.statuses else 200
                body = json.dumps({"taskId": "t1", "status": "IN_PROGRESS"} if status == 200
                                  else {"message": "scripted"}).encode()
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeConductorHttp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


def test_connection_refused_is_a_retryable_engine_unavailable(closed_url: str) -> None:
    api = ConductorApi(closed_url)
    try:
        with pytest.raises(EngineUnavailable) as caught:
            api.get_task("t1", retry_s=0)
    finally:
        api.close()
    assert caught.value.code == ErrorCode.ENGINE_UNAVAILABLE
    assert caught.value.retryable is True
    assert caught.value.details["neverSent"] is True


def test_an_unreachable_server_is_retried_for_retry_s_before_the_error(closed_url: str) -> None:
    api = ConductorApi(closed_url)
    began = time.monotonic()
    try:
        with pytest.raises(EngineUnavailable):
            api.get_task("t1", retry_s=1.5)
    finally:
        api.close()
    assert 0.7 <= time.monotonic() - began < 10


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_answers_are_retried_until_the_server_answers(status: int) -> None:
    with FakeConductorHttp([status, status]) as fake:
        api = ConductorApi(fake.url)
        try:
            task = api.get_task("t1", retry_s=10)
        finally:
            api.close()
    assert task["taskId"] == "t1"
    assert len(fake.requests) == 3


def test_gateway_answers_past_retry_s_are_engine_unavailable() -> None:
    with FakeConductorHttp([503] * 100) as fake:
        api = ConductorApi(fake.url)
        try:
            with pytest.raises(EngineUnavailable) as caught:
                api.update_task("w1", "t1", "COMPLETED", retry_s=0.5)
        finally:
            api.close()
    assert caught.value.retryable is True
    assert caught.value.details["neverSent"] is False
    assert 1 <= len(fake.requests) < 100


@pytest.mark.parametrize("status", [400, 404, 409, 500])
def test_other_answers_are_conductor_api_errors_at_once(status: int) -> None:
    with FakeConductorHttp([status]) as fake:
        api = ConductorApi(fake.url)
        try:
            with pytest.raises(ConductorApiError) as caught:
                api.get_task("t1", retry_s=10)
        finally:
            api.close()
    assert caught.value.status == status
    assert len(fake.requests) == 1


def test_a_start_that_may_have_reached_the_server_is_not_repeated() -> None:
    with FakeConductorHttp([503, 200]) as fake:
        api = ConductorApi(fake.url)
        try:
            with pytest.raises(EngineUnavailable):
                api.start_workflow({"name": "w"})
        finally:
            api.close()
    assert fake.requests == ["POST /api/workflow"]
