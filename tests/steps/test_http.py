"""The http kind end to end on the reference engine, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from plan_fetch_helpers import PlanServer, Route, Tls
from plan_fetch_helpers import tls_fixture as tls_fixture
from secret_helpers import assert_no_secrets

from dvt_engine.errors import StepParamsInvalid
from dvt_engine.models.run import RunStatus
from dvt_engine.planning.uri_policy import UriPolicy
from dvt_steps.http import HttpStepHandler
from dvt_steps.settings import HttpStepSettings

SECRET = "tok-9f8e7d6c5b4a-http-secret"
BIG = b"0123456789abcdef" * 4096  # 64 KiB: over the inline limit


class Server:
    """A real HTTP server in a thread; it records the path of every request it receives."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Set-Cookie", "session=abc")
                self.send_header("ETag", '"v1"')
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                outer.requests.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path == "/echo":
                    echoed = {"method": self.command, "headers": dict(self.headers.items()),
                              "body": body.decode()}
                    self._send(200, json.dumps(echoed).encode(), "application/json")
                elif self.path.startswith("/status/"):
                    status = int(self.path.rsplit("/", 1)[1])
                    said = f"status {status} for {self.headers.get('Authorization', '-')}"
                    self._send(status, said.encode(), "text/plain")
                elif self.path == "/big":
                    self._send(200, BIG, "application/octet-stream")
                elif self.path == "/big-echo":
                    token = (self.headers.get("Authorization") or "").encode()
                    self._send(200, token + b"\n" + BIG, "text/plain")
                elif self.path == "/slow":
                    outer.release.wait(30)
                    self._send(200, b"late", "text/plain")
                else:
                    self._send(200, b"hello", "text/plain")

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                return None  # a client that timed out and left is part of the tests

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with Server() as running:
        yield running


def http(server: Server, **kw: Any) -> dict[str, HttpStepHandler]:
    """The http kind allowed to call the test server (and nothing else)."""
    settings = HttpStepSettings(allowed_hosts=(server.base,), **kw)
    return {"http": HttpStepHandler(settings)}


def step(step_id: str, **params: Any) -> dict[str, Any]:
    return {"stepId": step_id, "kind": "http", "params": params}


async def test_a_get_records_status_headers_and_a_small_body(step_client: Any,
                                                            server: Server) -> None:
    async with step_client(http(server)) as c:
        ran = await c.run([step("get", url=f"{server.base}/echo")])
    assert ran.snapshot.status == RunStatus.COMPLETED
    out = ran.output("get")
    assert out["status"] == 200
    assert out["headers"]["content-type"] == "application/json"
    assert out["headers"]["etag"] == '"v1"'
    assert "set-cookie" not in out["headers"]
    assert out["json"]["method"] == "GET"
    assert out["json"]["headers"]["Host"] == f"127.0.0.1:{server.port}"


async def test_a_post_sends_json_and_secret_headers_that_never_reach_the_log(
        step_client: Any, server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    params = {"method": "POST", "url": f"{server.base}/echo",
              "headers": {"Authorization": {"secretRef": "vault:api"}, "X-Trace": "t-1",
                          "host": "elsewhere.example.com"},
              "json": {"rows": [1, 2], "key": {"secretRef": "vault:api"}}}
    async with step_client(http(server), secrets={"vault:api": SECRET}) as c:
        ran = await c.run([step("post", **params)])
    out = ran.output("post")
    assert out["json"]["method"] == "POST"
    assert out["json"]["headers"]["X-Trace"] == "t-1"
    assert out["json"]["headers"]["Host"] == f"127.0.0.1:{server.port}"
    assert out["json"]["headers"]["Authorization"] == "***"
    assert json.loads(out["json"]["body"]) == {"rows": [1, 2], "key": "***"}
    assert any(r.name.startswith("httpx") for r in caplog.records)  # the client did log
    assert_no_secrets(ran.text(), caplog.text, known=[SECRET])


async def test_a_large_body_is_an_artifact_with_secrets_masked(step_client: Any,
                                                              server: Server) -> None:
    headers = {"Authorization": {"secretRef": "vault:api"}}
    async with step_client(http(server), secrets={"vault:api": SECRET}) as c:
        ran = await c.run([step("big", url=f"{server.base}/big"),
                           step("echo", url=f"{server.base}/big-echo", headers=headers)])
    body = ran.output("big")["body"]
    assert body["mediaType"] == "application/octet-stream"
    assert await ran.artifact(body["uri"]) == BIG
    echoed = await ran.artifact(ran.output("echo")["body"]["uri"])
    assert echoed == b"***\n" + BIG
    assert [a.kind for a in ran.snapshot.artifacts] == ["http.response", "http.response"]
    assert all(SECRET.encode() not in blob for blob in c.artifacts.objects.values())


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (429, True), (404, False)])
async def test_an_unexpected_status_fails_with_its_code(step_client: Any, server: Server,
                                                       status: int, retryable: bool) -> None:
    headers = {"Authorization": {"secretRef": "vault:api"}}
    async with step_client(http(server), secrets={"vault:api": SECRET}) as c:
        ran = await c.run([step("s", url=f"{server.base}/status/{status}", headers=headers,
                                timeoutS=10)])
    error = ran.error("s")
    assert (error["code"], error["retryable"]) == ("HTTP_STATUS", retryable)
    assert f"HTTP {status} (expected 2xx)" in error["message"]
    assert f"status {status} for ***" in error["message"]
    assert SECRET not in ran.text()


async def test_expect_status_accepts_a_listed_status(step_client: Any, server: Server) -> None:
    async with step_client(http(server)) as c:
        ran = await c.run([step("gone", url=f"{server.base}/status/404",
                                expectStatus=[404, 410])])
    assert ran.output("gone") == {"status": 404, "headers": ran.output("gone")["headers"],
                                  "text": "status 404 for -"}


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:1/",              # loopback, but not this origin
    "http://localhost:{port}/echo",     # the same server under a name that is not allowlisted
    "http://10.1.2.3/",                 # private
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[::1]:{port}/echo",         # loopback over IPv6
    "ftp://127.0.0.1/x",
    "https://user@127.0.0.1:{port}/",
])
async def test_addresses_off_the_allowlist_are_refused_before_any_request(
        step_client: Any, server: Server, url: str) -> None:
    before = len(server.requests)
    async with step_client(http(server)) as c:
        ran = await c.run([step("r", url=url.format(port=server.port))])
    error = ran.error("r")
    assert (error["code"], error["retryable"]) == ("HTTP_URI_NOT_ALLOWED", False)
    assert len(server.requests) == before


async def test_a_wildcard_host_resolving_to_a_private_address_is_refused(
        step_client: Any, server: Server) -> None:
    async def fake_resolver(host: str, port: int) -> Sequence[str]:
        # A fake DNS answer: the name resolves to a private address; nothing is ever sent there.
        return ["10.0.0.5"]

    policy = UriPolicy([f"http://*.internal.test:{server.port}"], allow_registry=False,
                       resolver=fake_resolver)
    handler = HttpStepHandler(HttpStepSettings(), policy=policy)
    async with step_client({"http": handler}) as c:
        ran = await c.run([step("w", url=f"http://api.internal.test:{server.port}/")])
    error = ran.error("w")
    assert error["code"] == "HTTP_URI_NOT_ALLOWED"
    assert "private address" in error["message"]


async def test_the_entry_point_kind_allows_no_origin_by_default(step_client: Any,
                                                               server: Server) -> None:
    from dvt_engine.steps import default_registry

    async with step_client({"http": default_registry().get("http")}) as c:
        ran = await c.run([step("d", url=f"{server.base}/echo")])
    assert ran.error("d")["code"] == "HTTP_URI_NOT_ALLOWED"


async def test_the_host_setting_comes_from_the_environment(
        step_client: Any, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVT_STEPS_HTTP_ALLOWED_HOSTS", json.dumps([server.base]))
    async with step_client({"http": HttpStepHandler()}) as c:
        ran = await c.run([step("e", method="HEAD", url=f"{server.base}/echo")])
    assert ran.output("e")["status"] == 200
    assert "json" not in ran.output("e")


async def test_a_slow_response_times_out_with_a_code(step_client: Any, server: Server) -> None:
    async with step_client(http(server)) as c:
        ran = await c.run([step("slow", url=f"{server.base}/slow", timeoutS=0.5)])
    error = ran.error("slow")
    assert (error["code"], error["retryable"]) == ("STEP_TIMEOUT", True)


async def test_a_response_over_the_size_limit_is_refused(step_client: Any,
                                                        server: Server) -> None:
    async with step_client(http(server, max_response_bytes=1024)) as c:
        ran = await c.run([step("big", url=f"{server.base}/big")])
    assert ran.error("big")["code"] == "HTTP_RESPONSE_TOO_LARGE"


@pytest.mark.parametrize("params", [
    {"url": "http://127.0.0.1/", "json": {}, "body": "x"},
    {"url": "http://127.0.0.1/", "method": "BREW"},
    {"url": "http://127.0.0.1/", "headers": {"X": "a\r\nInjected: 1"}},
    {"url": "http://127.0.0.1/", "expectStatus": 99},
    {"method": "GET"},
])
async def test_bad_params_are_coded(step_client: Any, server: Server,
                                    params: dict[str, Any]) -> None:
    async with step_client(http(server)) as c:
        # Refused when the plan is validated, before any run exists: the kind's params schema.
        with pytest.raises(StepParamsInvalid) as refused:
            await c.run([step("b", **params)])
    assert refused.value.details["path"].startswith("/steps/0/params")


async def test_a_worker_without_the_extra_fails_the_step_with_a_code(
        step_client: Any, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # what an install without httpx looks like
    async with step_client(http(server)) as c:
        ran = await c.run([step("x", url=f"{server.base}/echo")])
    error = ran.error("x")
    assert (error["code"], error["retryable"]) == ("STEP_DEPENDENCY_MISSING", False)
    assert "dvt[steps-http]" in error["message"]


async def test_https_goes_to_the_approved_address_and_verifies_the_name(
        step_client: Any, tls: Tls) -> None:
    srv = PlanServer(tls.server)
    srv.routes["/data"] = Route(body=b'{"ok": true}',
                                headers={"Content-Type": "application/json"})
    try:
        allowed = (f"localhost:{srv.port}", f"127.0.0.1:{srv.port}")
        trusted = HttpStepHandler(HttpStepSettings(allowed_hosts=allowed), ssl_context=tls.client)
        async with step_client({"http": trusted}) as c:
            ran = await c.run([step("name", url=f"https://localhost:{srv.port}/data"),
                               step("ip", url=f"https://127.0.0.1:{srv.port}/data")])
        async with step_client({"http": HttpStepHandler(HttpStepSettings(
                allowed_hosts=allowed))}) as c:
            untrusted = await c.run([step("u", url=f"https://localhost:{srv.port}/data")])
    finally:
        srv.close()
    assert ran.output("name")["json"] == {"ok": True}
    assert ran.output("ip")["json"] == {"ok": True}
    assert sorted(srv.requests) == [("/data", f"127.0.0.1:{srv.port}"),
                                    ("/data", f"localhost:{srv.port}")]
    error = untrusted.error("u")
    assert (error["code"], error["retryable"]) == ("HTTP_REQUEST_FAILED", False)
    assert "not trusted" in error["message"]
