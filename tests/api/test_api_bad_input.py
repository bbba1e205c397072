"""Hostile and malformed requests: a coded problem+json each, nothing stored, nothing leaked."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from api_helpers import ApiServer, chain_plan, tenant
from secret_helpers import assert_no_secrets

LEAKS = ("Traceback", "File \"", "/work/", "site-packages", "SELECT ", "INSERT ", "psycopg",
         "dvt_sk_")


def _problem(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["instance"] == answer.headers["x-request-id"]
    for leak in LEAKS:
        assert leak not in answer.text


@pytest.fixture(scope="module")
def hostile(api_server: ApiServer) -> tuple[str, str]:
    t = tenant()
    return t, api_server.key(t, "runner", "reader", "operator", "approver")


def test_malformed_bodies_are_refused_and_store_nothing(
        api_server: ApiServer, hostile: tuple[str, str]) -> None:
    _, key = hostile
    with api_server.client(key) as c:
        json_type = {"Content-Type": "application/json"}
        _problem(c.post("/v1/runs", content=b'{"plan": ', headers=json_type),
                 422, "REQUEST_INVALID")
        _problem(c.post("/v1/runs", content=b"plan=1",
                        headers={"Content-Type": "application/x-www-form-urlencoded"}),
                 415, "UNSUPPORTED_MEDIA_TYPE")
        _problem(c.post("/v1/runs", content=json.dumps({"plan": chain_plan(1)}).encode(),
                        headers={"Content-Type": "text/plain"}), 415, "UNSUPPORTED_MEDIA_TYPE")
        _problem(c.post("/v1/runs", json={"plan": chain_plan(1), "tenantId": "other"}),
                 422, "REQUEST_INVALID")
        _problem(c.post("/v1/runs", json={"plan": chain_plan(1), "runId": "a|b"}),
                 422, "REQUEST_INVALID")
        _problem(c.post("/v1/runs", json={"plan": {"metadata": {}}}), 422,
                 "SCHEMA_VALIDATION_FAILED")
        refused = c.post("/v1/plans", json={**chain_plan(1), "steps": "nope"})
        assert refused.status_code == 422
        assert refused.json()["errors"]
        _problem(c.post("/v1/runs", json={"plan": chain_plan(1), "planRef": {"sha256": "a" * 64}}),
                 422, "REQUEST_INVALID")
        _problem(c.post("/v1/runs", json=[1, 2]), 422, "REQUEST_INVALID")
        big = b'{"plan": {"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}}'
        _problem(c.post("/v1/runs", content=big, headers=json_type), 413, "PAYLOAD_TOO_LARGE")
        _problem(c.post("/v1/runs", json={"plan": chain_plan(1)},
                        headers={"Idempotency-Key": "\u00e9".encode() * 3}), 422, "REQUEST_INVALID")
        assert c.get("/v1/runs").json()["items"] == []


def test_a_chunked_body_over_the_limit_is_cut_off(
        api_server: ApiServer, hostile: tuple[str, str]) -> None:
    _, key = hostile

    def chunks() -> object:
        yield b'{"plan": {"pad": "'
        for _ in range(12):
            yield b"x" * (1024 * 1024)
        yield b'"}}'

    with api_server.client(key) as c:
        for path in ("/v1/plans", "/v1/runs"):  # a raw body, and one parsed by the framework
            answer = c.post(path, content=chunks(),  # type: ignore[arg-type]
                            headers={"Content-Type": "application/json"})
            _problem(answer, 413, "PAYLOAD_TOO_LARGE")


def test_odd_ids_routes_and_methods_answer_with_codes(
        api_server: ApiServer, hostile: tuple[str, str]) -> None:
    _, key = hostile
    with api_server.client(key) as c:
        for run_id in ("x" * 300, "%00", "a%7Cb", "%E2%80%AE", "' OR 1=1 --", "%0d%0aX: y"):
            _problem(c.get(f"/v1/runs/{run_id}"), 404, "RUN_NOT_FOUND")
        # An encoded slash makes the path another (unknown) route.
        _problem(c.get("/v1/runs/..%2F..%2Fetc"), 404, "NOT_FOUND")
        _problem(c.get("/v1/runs/" + "x" * 5000), 422, "REQUEST_INVALID")
        _problem(c.get("/v1/plans/" + "z" * 64), 404, "PLAN_NOT_FOUND")
        _problem(c.get("/v1/nope"), 404, "NOT_FOUND")
        _problem(c.put("/v1/runs", json={}), 405, "METHOD_NOT_ALLOWED")
        _problem(c.get("/v1/runs", params={"limit": 0}), 422, "REQUEST_INVALID")
        _problem(c.get("/v1/runs", params={"cursor": "bm90LWEtY3Vyc29y"}), 422,
                 "REQUEST_INVALID")


def test_header_injection_is_not_reflected(api_server: ApiServer) -> None:
    # httpx refuses CR/LF in headers, so the raw request goes over a socket.
    parts = urlsplit(api_server.base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                     b"X-Request-Id: abc\rSet-Cookie: evil=1\r\n\r\n")
        reply = sock.recv(65536).decode("latin-1")
    assert "evil=1" not in reply
    with api_server.client() as c:
        answer = c.get("/healthz", headers={"X-Request-Id": "ok-id.1"})
        assert answer.headers["x-request-id"] == "ok-id.1"
        answer = c.get("/healthz", headers={"X-Request-Id": "<script>" + "a" * 300})
        assert answer.headers["x-request-id"] != "<script>" + "a" * 300
        assert len(answer.headers["x-request-id"]) == 32


def test_the_server_log_holds_no_secret(api_server: ApiServer,
                                        hostile: tuple[str, str]) -> None:
    _, key = hostile
    with api_server.client(key) as c:
        c.get("/v1/runs", headers={"X-Password": "hunter2-hunter2"})
        c.get("/v1/runs", params={"cursor": key})
    with api_server.client("dvt_sk_" + "Q" * 43) as c:
        last = c.get("/v1/runs")
        assert last.status_code == 401
    api_server.wait_for_log(last.headers["x-request-id"])  # every request line is written
    text = api_server.log_text()
    assert '"route": "/v1/runs"' in text  # the log has request lines to scan
    assert_no_secrets(text, known=[key, "dvt_sk_" + "Q" * 43, *api_server.admin_keys.values()])
    assert "dvt_sk_" not in text
    assert "Bearer" not in text
