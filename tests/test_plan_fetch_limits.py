"""Plan fetches are bounded: one deadline for the whole fetch, every byte read counts.

The servers here misbehave on purpose (dripping status lines and headers, endless
``100 Continue`` or trailers, stalls on every hop and address, bodies cut short). Each fetch
must end within its deadline, with its coded error. Elapsed times are compared with the
deadline itself plus a margin for a loaded machine: the behaviour under test, not speed.
"""

from __future__ import annotations

import threading

from plan_fetch_helpers import (
    PLAN_BYTES,
    PlanServer,
    Route,
    expect,
    ref_for,
)
from plan_fetch_helpers import other_server_fixture as other_server_fixture
from plan_fetch_helpers import server_fixture as server_fixture
from plan_fetch_helpers import tls_fixture as tls_fixture
from plan_fetch_helpers import tls_server_fixture as tls_server_fixture

from dvt_engine.errors import (
    PlanFetchFailed,
)
from dvt_engine.planning.fetch import PlanLoader

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
