"""A sweep of hostile input over HTTP, each checked against the store's own tables.

Each refused request gets a coded problem+json without internals, and the store holds no new
row of any kind afterwards (runs, events, plans, idempotency records): counted in PostgreSQL.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from api_helpers import ApiServer, chain_plan, gated_plan, tenant
from psycopg import sql

TABLES = ("dvt_runs", "dvt_events", "dvt_plans", "dvt_tenant_plans", "dvt_idempotency_keys",
          "dvt_outbox")
LEAKS = ("Traceback", "File \"", "site-packages", "SELECT ", "INSERT ", "psycopg", "dvt_sk_")
SQLISH = ("'; DROP TABLE dvt_events; --", "1 OR 1=1", "\" UNION SELECT * FROM dvt_api_keys --",
          "$$; SELECT pg_sleep(10); $$")


def _counts(store_url: str) -> dict[str, int]:
    parts = urlsplit(store_url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema")
    dsn = urlunsplit(parts._replace(query=urlencode(query)))
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(t))).fetchone()[0]  # type: ignore[index]
            for t in TABLES}


@contextmanager
def _stores_nothing(server: ApiServer) -> Iterator[None]:
    before = _counts(server.store_url)
    yield
    assert _counts(server.store_url) == before


def _problem(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert (body["code"], body["status"]) == (code, status)
    assert body["instance"] == answer.headers["x-request-id"]
    for leak in LEAKS:
        assert leak not in answer.text


@pytest.fixture(scope="module")
def key(api_server: ApiServer) -> str:
    return api_server.key(tenant(), "runner", "reader", "operator", "approver")


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/runs", {"plan": chain_plan(1), "priority": 1}),
    ("/v1/runs", {"planRef": {"sha256": "a" * 64, "extra": True}}),
    ("/v1/runs", {"plan": chain_plan(1), "inputs": {"x": 1}, "Plan": {}}),
    ("/v1/api-keys", {"roles": ["reader"], "tenantId": "other"}),
])
def test_unknown_fields_are_refused(api_server: ApiServer, key: str, path: str,
                                    body: dict[str, object]) -> None:
    admin = api_server.admin(tenant())
    with _stores_nothing(api_server), \
            api_server.client(admin if "api-keys" in path else key) as c:
        _problem(c.post(path, json=body), 422, "REQUEST_INVALID")


def test_bodies_that_are_not_json_objects_store_nothing(api_server: ApiServer, key: str) -> None:
    json_type = {"Content-Type": "application/json"}
    bodies: list[bytes] = [b"", b"null", b"\"plan\"", b"{\"plan\": NaN}", b"\xff\xfe{}",
                           b"{" * 10000, b"[" * 100000, b"{\"plan\": {}}" + b"\x00",
                           json.dumps({"plan": chain_plan(1)}).encode()[:-1]]
    with _stores_nothing(api_server), api_server.client(key) as c:
        for body in bodies:
            for path in ("/v1/runs", "/v1/plans", "/v1/runs/r-1/signals"):
                answer = c.post(path, content=body, headers=json_type)
                assert answer.status_code in (404, 413, 422), (path, body[:20], answer.text)
                _problem(answer, answer.status_code, answer.json()["code"])


def test_ten_megabyte_bodies_are_refused_everywhere(api_server: ApiServer, key: str) -> None:
    big = b'{"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    with _stores_nothing(api_server), api_server.client(key) as c:
        for path in ("/v1/runs", "/v1/plans", "/v1/plans/validate", "/v1/runs/r-1/signals"):
            _problem(c.post(path, content=big, headers={"Content-Type": "application/json"}),
                     413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize("run_id", [
    "%00", "a%00b", "..%2F..%2Fetc%2Fpasswd", "..", "%2E%2E", "%E2%80%AE%E2%80%AD",
    "\u202egnp.exe", "x" * 10_000, "%F0%9F%92%A9" * 50, "%C0%AF", "%ZZ", *SQLISH,
])
def test_odd_run_ids_in_paths_answer_with_codes(api_server: ApiServer, key: str,
                                                run_id: str) -> None:
    with _stores_nothing(api_server), api_server.client(key) as c:
        for method, suffix, body in (("GET", "", None), ("GET", "/events", None),
                                     ("GET", "/stream", None),
                                     ("POST", "/signals", {"type": "PAUSE"})):
            path = f"/v1/runs/{run_id}{suffix}"
            # A client would resolve "/v1/runs/../stream" to "/v1/stream" (a real route) before
            # sending; the request line is sent as written so the service sees the odd id.
            raw = {"target": path.encode()} if set(run_id) == {"."} else None
            answer = c.request(method, path, json=body, extensions=raw)
            assert answer.status_code in (404, 422), (method, suffix, answer.text)
            code = answer.json()["code"]
            assert code in ("RUN_NOT_FOUND", "NOT_FOUND", "REQUEST_INVALID"), code
            _problem(answer, answer.status_code, code)


@pytest.mark.parametrize("run_id", ["a\u0000b", "a\nb", "a|b", "x" * 201, ""])
def test_odd_run_ids_in_bodies_are_refused(api_server: ApiServer, key: str, run_id: str) -> None:
    with _stores_nothing(api_server), api_server.client(key) as c:
        _problem(c.post("/v1/runs", json={"plan": chain_plan(1), "runId": run_id}), 422,
                 "REQUEST_INVALID")


@pytest.mark.parametrize("text", [*SQLISH, "\u202egnp.exe", "\u202e",
                                  "r\u00e9sum\u00e9 \U0001f4a9"])
def test_sql_looking_and_unicode_ids_are_data(api_server: ApiServer, key: str,
                                              text: str) -> None:
    """Accepted where the schema allows them, stored verbatim, read back through Location."""
    with api_server.client(key) as c:
        created = c.post("/v1/runs", json={"plan": chain_plan(1), "runId": text,
                                           "inputs": {"note": text}},
                         headers={"Idempotency-Key": "k-" + str(abs(hash(text)))})
        assert created.status_code == 201, created.text
        assert created.json()["runId"] == text
        location = created.headers["location"]
        assert location == "/v1/runs/" + quote(text, safe="")
        read = c.get(location)
        assert read.status_code == 200, read.text
        assert read.json()["runId"] == text
        events = c.get(location + "/events").json()["items"]
        assert events
        assert {e["runId"] for e in events} == {text}


def _raw(server: ApiServer, request: bytes) -> str:
    parts = urlsplit(server.base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks).decode("latin-1")


@pytest.mark.parametrize("header", [b"Idempotency-Key", b"X-Request-Id"])
# (CR LF ends the header line: what follows is a header of its own, not an injection.)
@pytest.mark.parametrize("value", [b"abc\rSet-Cookie: evil=1", b"abc\nSet-Cookie: evil=1",
                                   b"abc\x00def", b"abc\x7fdef"])
def test_cr_lf_in_headers_is_not_reflected_nor_stored(api_server: ApiServer, key: str,
                                                      header: bytes, value: bytes) -> None:
    body = json.dumps({"plan": chain_plan(1)}).encode()
    request = (b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Authorization: Bearer " + key.encode() + b"\r\n"
               b"Content-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n" +
               header + b": " + value + b"\r\n\r\n" + body)
    with _stores_nothing(api_server):
        reply = _raw(api_server, request)
    status = int(reply.split(" ", 2)[1])
    head = reply.split("\r\n\r\n", 1)[0].lower()
    assert "set-cookie" not in head
    assert "evil" not in reply
    assert status in (400, 422), reply


def test_odd_signals_to_a_live_run_answer_with_codes(api_server: ApiServer,
                                                      key: str) -> None:
    with api_server.client(key) as c:
        run_id = c.post("/v1/runs", json={"plan": gated_plan()}).json()["runId"]
        refusals: list[tuple[dict[str, object], int, str]] = [
            ({"type": "APPROVE_STEP", "stepId": "'; DROP TABLE dvt_runs; --"}, 422,
             "STEP_NOT_FOUND"),
            ({"type": "DROP"}, 422, "REQUEST_INVALID"),
            ({"type": "PAUSE", "reason": "x" * 100_000}, 422, "REQUEST_INVALID"),
            ({"type": "PAUSE", "actor": {"id": "root"}}, 422, "REQUEST_INVALID"),
        ]
        for body, status, code in refusals:
            _problem(c.post(f"/v1/runs/{run_id}/signals", json=body), status, code)


def test_nul_characters_in_text_are_refused_before_the_store(api_server: ApiServer,
                                                             key: str) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: a 422, not a store failure."""
    t = tenant()
    admin = api_server.admin(t)
    with _stores_nothing(api_server):
        with api_server.client(admin) as c:
            _problem(c.post("/v1/api-keys", json={"roles": ["reader"], "name": "a\u0000b"}),
                     422, "REQUEST_INVALID")
        with api_server.client(key) as c:
            _problem(c.post("/v1/runs", json={"plan": chain_plan(1),
                                              "inputs": {"note": "a\u0000b"}}),
                     422, "REQUEST_INVALID")
            _problem(c.post("/v1/runs", json={"plan": chain_plan(1),
                                              "inputs": {"a\u0000b": 1}}),
                     422, "REQUEST_INVALID")
            plan = chain_plan(1)
            plan["metadata"]["description"] = "a\u0000b"
            answer = c.post("/v1/plans", json=plan)
            assert answer.status_code == 422, answer.text
            _problem(answer, 422, answer.json()["code"])
    with api_server.client(key) as c:
        run_id = c.post("/v1/runs", json={"plan": gated_plan()}).json()["runId"]
        before = _counts(api_server.store_url)["dvt_idempotency_keys"]
        _problem(c.post(f"/v1/runs/{run_id}/signals", json={"type": "PAUSE",
                                                             "reason": "a\u0000b"}),
                 422, "REQUEST_INVALID")
        assert _counts(api_server.store_url)["dvt_idempotency_keys"] == before
