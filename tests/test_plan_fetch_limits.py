"""Plan fetches are bounded: one deadline for the whole fetch, every byte read counts.

The servers here misbehave on purpose (dripping status lines and headers, endless
``100 Continue`` or trailers, stalls on every hop and address, bodies cut short). Each fetch
must end within its deadline, with its coded error. Elapsed times are compared with the
deadline itself plus a margin for a loaded machine: the behaviour under test, not speed.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

import pytest
from plan_fetch_helpers import (
    PLAN_BYTES,
    PLAN_SHA,
    PlanServer,
    Route,
    Script,
    ScriptedServer,
    drip,
    expect,
    forever,
    ref_for,
    static_resolver,
)
from plan_fetch_helpers import other_server_fixture as other_server_fixture
from plan_fetch_helpers import server_fixture as server_fixture
from plan_fetch_helpers import tls_fixture as tls_fixture
from plan_fetch_helpers import tls_server_fixture as tls_server_fixture

from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.errors import DvtError, ErrorCode, PlanFetchFailed, PlanUriNotAllowed
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunContext
from dvt_engine.planning.fetch import PlanLoader
from dvt_engine.planning.https import HttpsPlanFetcher
from dvt_engine.planning.uri_policy import UriPolicy
from dvt_engine.stores.memory import MemoryRunStateStore

# --- body size and stalls ---


async def test_a_stalled_body_fails_retryably_within_the_timeout(server: PlanServer) -> None:
    release = threading.Event()
    server.routes["/stalled"] = Route(body=PLAN_BYTES, stall=release)
    loader = PlanLoader(None, allowed_hosts=[server.origin], timeout_s=0.3)
    try:
        err = await expect(loader, ref_for(server.url("/stalled")), PlanFetchFailed)
    finally:
        release.set()
    assert err.retryable is True
    assert server.requests == [("/stalled", f"127.0.0.1:{server.port}")]


async def test_body_larger_than_the_cap_is_refused(server: PlanServer) -> None:
    server.routes["/huge"] = Route(body=b" " * 5000 + PLAN_BYTES)
    loader = PlanLoader(None, allowed_hosts=[server.origin], max_plan_bytes=4096)
    err = await expect(loader, ref_for(server.url("/huge")), PlanFetchFailed)
    assert err.retryable is False
    assert err.details["maxBytes"] == 4096


async def test_declared_size_over_the_cap_is_refused_before_fetching(server: PlanServer) -> None:
    loader = PlanLoader(None, allowed_hosts=[server.origin], max_plan_bytes=4096)
    await expect(loader, ref_for(server.url("/plan.json"), size_bytes=10_000), PlanFetchFailed)
    assert server.requests == []


# --- one deadline for the whole fetch ---

DEADLINE = 1.0
# Room for a loaded machine (thread start, scheduling): far below what an unbounded fetch takes.
MARGIN = 2.0
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    """``scripted(script, host=..., port=...)`` starts a ScriptedServer closed after the test."""
    started: list[ScriptedServer] = []

    def start(script: Script, host: str = "127.0.0.1", port: int = 0) -> ScriptedServer:
        srv = ScriptedServer(script, host, port)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.close()


def loader_for(srv: ScriptedServer, **kw: Any) -> PlanLoader:
    return PlanLoader(None, allowed_hosts=[srv.url("")], timeout_s=DEADLINE, **kw)


def no_fetch_thread_left() -> bool:
    """True when no thread is inside the https fetcher's blocking exchange."""
    code = HttpsPlanFetcher._request.__code__
    for frame in sys._current_frames().values():
        current: FrameType | None = frame
        while current is not None:
            if current.f_code is code:
                return False
            current = current.f_back
    return True


async def timed_failure(loader: PlanLoader, ref: PlanRef) -> tuple[DvtError, float]:
    start = time.monotonic()
    with pytest.raises(DvtError) as info:
        await loader.load(ref)
    return info.value, time.monotonic() - start


def assert_timed_out(err: DvtError, elapsed: float) -> None:
    assert isinstance(err, PlanFetchFailed), repr(err)
    assert err.code is ErrorCode.PLAN_FETCH_FAILED
    assert err.details["reason"] == "timeout", err.details
    assert err.retryable is True
    assert DEADLINE * 0.9 <= elapsed < DEADLINE + MARGIN, elapsed
    assert no_fetch_thread_left()


async def test_a_dripping_status_line_meets_the_deadline(
    scripted: Callable[..., ScriptedServer],
) -> None:
    srv = scripted(lambda conn, stop, path: drip(conn, stop, OK_HEAD * 20, every=0.05))
    err, elapsed = await timed_failure(loader_for(srv), ref_for(srv.url("/plan.json")))
    assert_timed_out(err, elapsed)


async def test_dripping_headers_meet_the_deadline(
    scripted: Callable[..., ScriptedServer],
) -> None:
    def script(conn: socket.socket, stop: threading.Event, path: str) -> None:
        conn.sendall(OK_HEAD)
        forever(conn, stop, b"X-Slow: 1\r\n", every=0.05)

    srv = scripted(script)
    err, elapsed = await timed_failure(loader_for(srv), ref_for(srv.url("/plan.json")))
    assert_timed_out(err, elapsed)


async def test_slow_endless_100_continue_meets_the_deadline(
    scripted: Callable[..., ScriptedServer],
) -> None:
    srv = scripted(
        lambda conn, stop, path: forever(conn, stop, b"HTTP/1.1 100 Continue\r\n\r\n", 0.05)
    )
    err, elapsed = await timed_failure(loader_for(srv), ref_for(srv.url("/plan.json")))
    assert_timed_out(err, elapsed)


@pytest.mark.parametrize(
    "filler",
    [b"HTTP/1.1 100 Continue\r\n\r\n", b"X-Filler: " + b"a" * 1000 + b"\r\n"],
    ids=["100-continue", "headers"],
)
async def test_fast_endless_heads_hit_the_head_limit(
    scripted: Callable[..., ScriptedServer], filler: bytes
) -> None:
    def script(conn: socket.socket, stop: threading.Event, path: str) -> None:
        if filler.startswith(b"X-"):
            conn.sendall(OK_HEAD)
        forever(conn, stop, filler, every=0)

    srv = scripted(script)
    err, elapsed = await timed_failure(loader_for(srv), ref_for(srv.url("/plan.json")))
    assert isinstance(err, PlanFetchFailed)
    assert err.details["reason"] == "response_too_large"
    assert err.retryable is False
    assert elapsed < DEADLINE + MARGIN


def chunked_plan_then(trailer: bytes, every: float) -> Script:
    def script(conn: socket.socket, stop: threading.Event, path: str) -> None:
        conn.sendall(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        conn.sendall(b"%x\r\n%s\r\n0\r\n" % (len(PLAN_BYTES), PLAN_BYTES))
        forever(conn, stop, trailer, every)

    return script


async def test_endless_trailers_count_against_the_cap(
    scripted: Callable[..., ScriptedServer],
) -> None:
    srv = scripted(chunked_plan_then(b"X-Trailer: " + b"t" * 1000 + b"\r\n", every=0))
    loader = loader_for(srv, max_plan_bytes=4096)
    err, elapsed = await timed_failure(loader, ref_for(srv.url("/plan.json")))
    assert isinstance(err, PlanFetchFailed)
    assert err.details["reason"] == "response_too_large"
    assert err.retryable is False
    assert elapsed < DEADLINE + MARGIN


async def test_slow_endless_trailers_meet_the_deadline(
    scripted: Callable[..., ScriptedServer],
) -> None:
    srv = scripted(chunked_plan_then(b"X-Trailer: 1\r\n", every=0.05))
    err, elapsed = await timed_failure(loader_for(srv), ref_for(srv.url("/plan.json")))
    assert_timed_out(err, elapsed)


def redirect_chain(delay: float) -> Script:
    """/hop0 -> /hop1 -> /hop2 -> /hop3 (the plan), each answer ``delay`` seconds late."""

    def script(conn: socket.socket, stop: threading.Event, path: str) -> None:
        if stop.wait(delay):
            return
        hop = int(path.removeprefix("/hop"))
        if hop < 3:
            conn.sendall(
                b"HTTP/1.1 302 Found\r\nLocation: /hop%d\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n" % (hop + 1)
            )
        else:
            conn.sendall(OK_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(PLAN_BYTES), PLAN_BYTES))

    return script


async def test_the_deadline_spans_every_redirect_hop(
    scripted: Callable[..., ScriptedServer],
) -> None:
    srv = scripted(redirect_chain(0.4))  # each hop well inside the deadline, all four not
    err, elapsed = await timed_failure(loader_for(srv), ref_for(srv.url("/hop0")))
    assert_timed_out(err, elapsed)
    assert 2 <= srv.connections <= 3
    # The same chain under a deadline it fits in is followed to the plan.
    patient = PlanLoader(None, allowed_hosts=[srv.url("")], timeout_s=DEADLINE * 5)
    assert (await patient.load(ref_for(srv.url("/hop0")))).sha256 == PLAN_SHA


async def test_the_deadline_spans_every_address(
    scripted: Callable[..., ScriptedServer],
) -> None:
    def hang_up_late(conn: socket.socket, stop: threading.Event, path: str) -> None:
        stop.wait(0.45)  # then the connection closes without an answer

    first = scripted(hang_up_late)
    others = [scripted(hang_up_late, host, first.port) for host in ("127.0.0.2", "127.0.0.3")]
    policy = UriPolicy(
        [f"http://plans.internal.test:{first.port}"],
        resolver=static_resolver({"plans.internal.test": ["127.0.0.1", "127.0.0.2", "127.0.0.3"]}),
    )
    loader = PlanLoader(None, policy=policy, timeout_s=DEADLINE)
    ref = ref_for(f"http://plans.internal.test:{first.port}/plan.json")
    err, elapsed = await timed_failure(loader, ref)
    assert_timed_out(err, elapsed)
    assert first.connections == 1
    assert others[0].connections == 1  # the second address got the time that was left
    assert others[1].connections <= 1


async def test_an_address_that_drops_connects_leaves_time_for_the_next(
    scripted: Callable[..., ScriptedServer],
) -> None:
    def serve_plan(conn: socket.socket, stop: threading.Event, path: str) -> None:
        conn.sendall(OK_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(PLAN_BYTES), PLAN_BYTES))

    good = scripted(serve_plan)
    # A listener that never accepts, with its one-slot queue taken: Linux drops further SYNs,
    # so connecting to it hangs like connecting to a black-holed address.
    with socket.socket() as full, socket.socket() as queued:
        full.bind(("127.0.0.2", good.port))
        full.listen(0)
        queued.connect(("127.0.0.2", good.port))
        policy = UriPolicy(
            [f"http://plans.internal.test:{good.port}"],
            resolver=static_resolver({"plans.internal.test": ["127.0.0.2", "127.0.0.1"]}),
        )
        loader = PlanLoader(None, policy=policy, timeout_s=DEADLINE)
        start = time.monotonic()
        loaded = await loader.load(ref_for(f"http://plans.internal.test:{good.port}/plan.json"))
        elapsed = time.monotonic() - start
    assert loaded.sha256 == PLAN_SHA
    assert DEADLINE * 0.4 <= elapsed < DEADLINE + MARGIN, elapsed  # waited for half, not all
    assert good.connections == 1


async def test_resolution_counts_against_the_deadline() -> None:
    never = asyncio.Event()

    async def silent_dns(host: str, port: int) -> Sequence[str]:
        await never.wait()
        return []

    policy = UriPolicy(["plans.example.com"], resolver=silent_dns, resolve_timeout_s=30)
    loader = PlanLoader(None, policy=policy, timeout_s=DEADLINE)
    err, elapsed = await timed_failure(loader, ref_for("https://plans.example.com/plan.json"))
    assert_timed_out(err, elapsed)


async def test_one_deadline_covers_the_loaders_check_and_the_fetch(
    scripted: Callable[..., ScriptedServer],
) -> None:
    srv = scripted(redirect_chain(0.0))

    async def slow_dns(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(0.4)  # a slow resolver, asked once by the loader, once per hop
        return ["127.0.0.1"]

    policy = UriPolicy([f"http://plans.internal.test:{srv.port}"], resolver=slow_dns)
    loader = PlanLoader(None, policy=policy, timeout_s=DEADLINE)
    ref = ref_for(f"http://plans.internal.test:{srv.port}/hop0")
    err, elapsed = await timed_failure(loader, ref)
    assert_timed_out(err, elapsed)


async def test_a_tls_handshake_that_never_comes_meets_the_deadline(
    scripted: Callable[..., ScriptedServer],
) -> None:
    srv = scripted(lambda conn, stop, path: None)  # never reads a request: TLS never starts
    loader = PlanLoader(None, allowed_hosts=[f"127.0.0.1:{srv.port}"], timeout_s=DEADLINE)
    err, elapsed = await timed_failure(loader, ref_for(f"https://127.0.0.1:{srv.port}/p.json"))
    assert_timed_out(err, elapsed)


# --- bodies cut short are network failures, not integrity failures ---


@pytest.mark.parametrize("declared", [None, len(PLAN_BYTES) + 100])
async def test_a_body_short_of_its_content_length_is_retryable(
    scripted: Callable[..., ScriptedServer], declared: int | None
) -> None:
    def script(conn: socket.socket, stop: threading.Event, path: str) -> None:
        conn.sendall(OK_HEAD + b"Content-Length: %d\r\n\r\n" % (len(PLAN_BYTES) + 100))
        conn.sendall(PLAN_BYTES)  # then the connection closes

    srv = scripted(script)
    ref = ref_for(srv.url("/plan.json"), size_bytes=declared)
    err, _ = await timed_failure(loader_for(srv), ref)
    assert isinstance(err, PlanFetchFailed), repr(err)
    assert err.details["reason"] == "truncated"
    assert err.retryable is True


async def test_a_chunked_body_cut_short_is_retryable(
    scripted: Callable[..., ScriptedServer],
) -> None:
    def script(conn: socket.socket, stop: threading.Event, path: str) -> None:
        conn.sendall(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        conn.sendall(b"%x\r\n%s" % (len(PLAN_BYTES) * 2, PLAN_BYTES))

    srv = scripted(script)
    err, _ = await timed_failure(loader_for(srv), ref_for(srv.url("/plan.json")))
    assert isinstance(err, PlanFetchFailed), repr(err)
    assert err.details["reason"] == "truncated"
    assert err.retryable is True


# --- URIs a request line cannot carry ---


async def test_a_non_ascii_path_is_a_coded_refusal(server: PlanServer) -> None:
    loader = PlanLoader(None, allowed_hosts=[server.origin])
    err = await expect(loader, ref_for(server.url("/plän.json")), PlanUriNotAllowed)
    assert "non-ASCII" in err.message
    assert server.requests == []


async def test_a_redirect_to_a_non_ascii_location_is_a_coded_refusal(
    scripted: Callable[..., ScriptedServer],
) -> None:
    def script(conn: socket.socket, stop: threading.Event, path: str) -> None:
        conn.sendall(
            b"HTTP/1.1 302 Found\r\nLocation: /pl\xc3\xa4n.json\r\nContent-Length: 0\r\n\r\n"
        )

    srv = scripted(script)
    err = await expect(loader_for(srv), ref_for(srv.url("/plan.json")), PlanUriNotAllowed)
    assert err.retryable is False
    assert srv.connections == 1


async def test_start_run_with_a_dripping_plan_server_ends_by_the_deadline(
    scripted: Callable[..., ScriptedServer],
) -> None:
    srv = scripted(lambda conn, stop, path: drip(conn, stop, OK_HEAD * 20, every=0.05))
    policy = UriPolicy([srv.url("")], allow_registry=False)
    fetcher = HttpsPlanFetcher(policy, timeout_s=DEADLINE)
    store = MemoryRunStateStore()
    engine = ReferenceEngine(store, uri_policy=policy, fetchers={"http": fetcher})
    context = RunContext(tenant_id="t", project_id="p", environment_id="e", run_id="r1")
    start = time.monotonic()
    try:
        with pytest.raises(PlanFetchFailed) as info:
            await engine.start_run(ref_for(srv.url("/plan.json")), context)
    finally:
        await engine.close()
    assert_timed_out(info.value, time.monotonic() - start)
    assert await store.get_run("t", "r1") is None
