"""The tenant stream: resumable by cursor across concurrent runs, tenant-tight, and a client
that stops reading is dropped by the hub (bounded queue) and resumes by cursor."""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import (
    ApiServer,
    SseMessage,
    chain_plan,
    sse_messages,
    start_server,
    stop_server,
    tenant,
)

from dvt_engine.builder import PlanBuilder

START = "0"  # the cursor before a tenant's first event


def _read(c: httpx.Client, last: str, take: int, ends: int) -> list[SseMessage]:
    """``take`` messages of the tenant stream after ``last``, then disconnect (earlier after
    the ``ends``-th RunCompleted counted from ``ends``' start: the stream itself never ends)."""
    got: list[SseMessage] = []
    with c.stream("GET", "/v1/stream", headers={"Last-Event-ID": last}) as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        for message in sse_messages(s.iter_lines()):
            got.append(message)
            ends -= message.event == "RunCompleted"
            if len(got) >= take or ends <= 0:
                break
    return got


def _run_log(c: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    return list(c.get(f"/v1/runs/{run_id}/events", params={"limit": 1000}).json()["items"])


def _start_runs(c: httpx.Client, plans: list[dict[str, Any]], into: list[str]) -> None:
    for plan in plans:
        answer = c.post("/v1/runs", json={"plan": plan})
        assert answer.status_code in (201, 202), answer.text
        into.append(answer.json()["runId"])


def _check_union(seen: list[SseMessage], c: httpx.Client, run_ids: list[str]) -> None:
    """The messages are exactly the runs' logs: each event once, each run in runSeq order."""
    docs = [json.loads(m.data) for m in seen]
    keys = [(d["runId"], d["runSeq"]) for d in docs]
    assert len(keys) == len(set(keys)), "an event was repeated"
    expected = {(d["runId"], d["runSeq"]): d for r in run_ids for d in _run_log(c, r)}
    assert set(keys) == set(expected)
    assert all(doc == expected[(doc["runId"], doc["runSeq"])] for doc in docs)
    assert all(m.event == d["eventType"] for m, d in zip(seen, docs, strict=True))
    for run_id in run_ids:
        seqs = [d["runSeq"] for d in docs if d["runId"] == run_id]
        assert seqs == sorted(seqs)


def test_resuming_at_random_points_yields_the_tenants_log_once(api_server: ApiServer) -> None:
    rng = random.Random(20261206)
    mine, other = tenant(), tenant()
    with api_server.client(api_server.key(mine, "runner", "reader")) as c, \
            api_server.client(api_server.key(other, "runner", "reader")) as o:
        runs: list[str] = []
        others: list[str] = []
        seen: list[SseMessage] = []
        writers = [threading.Thread(target=_start_runs, args=(c, [chain_plan(3)] * 3, runs)),
                   threading.Thread(target=_start_runs, args=(c, [chain_plan(2)] * 2, runs)),
                   threading.Thread(target=_start_runs, args=(o, [chain_plan(2)] * 2, others))]
        for w in writers:
            w.start()
        last = START
        try:
            while (done := sum(m.event == "RunCompleted" for m in seen)) < 5:
                seen += _read(c, last, rng.randint(1, 5), 5 - done)
                last = seen[-1].id or last
        finally:
            for w in writers:
                w.join()
        assert len(runs) == 5
        assert len(others) == 2
        _check_union(seen, c, runs)
        assert not {json.loads(m.data)["runId"] for m in seen} & set(others)


def test_bad_cursors_are_refused(api_server: ApiServer) -> None:
    with api_server.client(api_server.key(tenant(), "reader")) as c:
        for bad in ("-1", "abc", "1.2.3", "9" * 40):
            answer = c.get("/v1/stream", headers={"Last-Event-ID": bad})
            assert answer.status_code == 422
            assert answer.json()["code"] == "REQUEST_INVALID"
        assert c.get("/v1/stream", params={"after": "x"}).status_code == 422
    with api_server.client(api_server.key(tenant(), "runner")) as c:
        assert c.get("/v1/stream").status_code == 403


def test_a_cursor_of_the_memory_store_is_refused_before_the_stream(
        api_server: ApiServer) -> None:
    # Well formed, but the memory store's shape: the PostgreSQL store cannot resume from it,
    # so it is a 422 problem, not a stream that fails after its first line.
    with api_server.client(api_server.key(tenant(), "reader")) as c:
        for where in ({"headers": {"Last-Event-ID": "12"}}, {"params": {"after": "12"}}):
            answer = c.get("/v1/stream", **where)  # type: ignore[arg-type]
            assert answer.status_code == 422, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["code"] == "REQUEST_INVALID"
            assert "PostgreSQL" in answer.json()["errors"][0]["message"]


QUEUE = 8


@pytest.fixture(scope="module")
def small_queue_server(api_store_url: str, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[ApiServer]:
    """A server whose tenant-stream clients may fall only QUEUE events behind."""
    tmp = tmp_path_factory.mktemp("api-small-queue")
    server = start_server(api_store_url, tmp / "server.log", tmp / "home",
                          env={"DVT_API_SSE_CLIENT_QUEUE": str(QUEUE),
                               "DVT_API_SSE_SEND_TIMEOUT_S": "600"})
    try:
        yield server
    finally:
        stop_server(server)


def _metric(c: httpx.Client, name: str) -> float:
    text = c.get("/metrics").text
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


def _bulky_plan(steps: int) -> dict[str, Any]:
    """echo steps whose outputs are large, so a stalled client's socket buffers fill up."""
    builder = PlanBuilder("bulky", "1")
    for i in range(steps):
        builder = builder.step(f"s{i}", "echo", depends_on=[f"s{i - 1}"] if i else [],
                               params={"i": i, "blob": "x" * 30_000})
    return builder.build()


def _raw_stream(server: ApiServer, key: str, last: str) -> tuple[socket.socket, bytes]:
    """A stream request on a socket with a tiny receive buffer, answered up to its comment."""
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.settimeout(60)
    sock.connect((host, int(port)))
    sock.sendall((f"GET /v1/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                  f"Last-Event-ID: {last}\r\nConnection: close\r\n\r\n").encode())
    head = b""
    while b"stream of tenant events" not in head:
        chunk = sock.recv(1024)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200")
    return sock, head


def _dechunk(body: bytes) -> str:
    out, rest = b"", body
    while rest:
        size_text, _, rest = rest.partition(b"\r\n")
        size = int(size_text, 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out.decode()


def test_a_client_that_stops_reading_is_dropped_and_resumes(
        small_queue_server: ApiServer, tmp_path: Path) -> None:
    server = small_queue_server
    t = tenant()
    key = server.key(t, "runner", "reader")
    with server.client(key) as c:
        assert _metric(c, "dvt_sse_clients_dropped_total") == 0
        stalled, body = _raw_stream(server, key, START)  # reads nothing more from here on
        runs: list[str] = []
        # ~10 MB of events: more than the kernel's socket buffers (tcp_wmem tops out at 4 MB
        # by default) and uvicorn's write buffer can hold for a client that reads nothing.
        writers = [threading.Thread(target=_start_runs, args=(c, [_bulky_plan(16)] * 5, runs))
                   for _ in range(4)]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        for run_id in runs:  # each run's own stream ends after its terminal event
            with c.stream("GET", f"/v1/runs/{run_id}/stream") as s:
                assert [m.event for m in sse_messages(s.iter_lines())][-1] == "RunCompleted"
        # The hub drops the client as its queue overflows; wait for that to be visible.
        deadline = time.monotonic() + 30
        while _metric(c, "dvt_sse_clients_dropped_total") < 1:
            assert time.monotonic() < deadline, (
                "the stalled client was never dropped", _metric(c, "dvt_sse_queued_events"),
                sum(len(json.dumps(d)) for r in runs for d in _run_log(c, r)))
        # Its queue was freed with it: nothing is held for a client that is gone.
        assert _metric(c, "dvt_sse_queued_events") == 0
        while chunk := stalled.recv(65536):  # the server ends the stream: EOF, no timeout
            body += chunk
        stalled.close()
        text = _dechunk(body.partition(b"\r\n\r\n")[2])
        got = list(sse_messages(iter(text.replace("\r\n", "\n").split("\n"))))
        assert got, "some events were sent before the client stalled"
        assert sum(m.event == "RunCompleted" for m in got) < len(runs)
        rest: list[SseMessage] = []
        last = got[-1].id or START
        with c.stream("GET", "/v1/stream", headers={"Last-Event-ID": last}) as s:
            for message in sse_messages(s.iter_lines()):
                rest.append(message)
                if sum(m.event == "RunCompleted" for m in got + rest) == len(runs):
                    break
        _check_union(got + rest, c, runs)
        assert _metric(c, "dvt_sse_clients_dropped_total") == 1


def test_the_stream_request_is_logged_with_its_trace_and_never_its_key(
        api_server: ApiServer) -> None:
    from secret_helpers import assert_no_secrets

    t = tenant()
    key = api_server.key(t, "reader")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    request_id = f"req-{t}"
    with api_server.client(key) as c:
        answer = c.get("/v1/stream", params={"after": "x"},
                       headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01",
                                "X-Request-Id": request_id})
        assert answer.status_code == 422
    line = json.loads(api_server.wait_for_log(request_id))
    assert sum(request_id in logged for logged in api_server.log_text().splitlines()) == 1
    assert line["msg"] == "request"
    assert line["trace_id"] == trace
    assert line["tenant_id"] == t
    assert line["route"] == "/v1/stream"
    assert line["status"] == 422
    assert_no_secrets(api_server.log_text(), known=[key])
