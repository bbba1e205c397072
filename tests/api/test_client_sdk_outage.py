"""dvt_client through real 503 and 429 answers of a real `dvt serve`.

503: the server's PostgreSQL is reached through a TCP proxy that the test takes down, so the
service answers STORE_UNAVAILABLE with Retry-After; the outage ends while the client waits.
429: the reference engine's signal limit (DVT_REFERENCE_SIGNAL_RATE_LIMIT_PER_MINUTE) refuses
the fifth signal to a run within a minute. The client's ``sleep`` is the test's: it records
the wait the client chose (Retry-After is 60 s) instead of spending it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from api_helpers import ApiServer, chain_plan, gated_plan, start_server, stop_server, tenant
from tcp_proxy import TcpProxy

from dvt_client import Client, RateLimited, RetryPolicy, ServiceUnavailable

SIGNALS_PER_MINUTE = 4  # even: pause/resume pairs use it up


def _through(store_url: str, proxy: TcpProxy) -> str:
    """The store URL with the proxy's address instead of the database's."""
    parts = urlsplit(store_url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=user + proxy.url.removeprefix("http://")))


@pytest.fixture(scope="module")
def db_proxy(api_store_url: str) -> Iterator[TcpProxy]:
    """A proxy in front of the store's PostgreSQL."""
    parts = urlsplit(api_store_url)
    proxy = TcpProxy(f"http://{parts.hostname}:{parts.port}")
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def server(api_store_url: str, db_proxy: TcpProxy, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ApiServer]:
    """`dvt serve` on the proxied store, with a store timeout of 2 s and a low signal limit."""
    tmp: Path = tmp_path_factory.mktemp("outage")
    url = _through(api_store_url, db_proxy)
    url += ("&" if "?" in url else "?") + "timeout=2"
    started = start_server(url, tmp / "server.log", tmp / "home", env={
        "DVT_REFERENCE_SIGNAL_RATE_LIMIT_PER_MINUTE": str(SIGNALS_PER_MINUTE)})
    try:
        yield started
    finally:
        db_proxy.refusing = False
        assert stop_server(started) == 0


def test_rate_limited_signals_wait_retry_after_then_raise(server: ApiServer) -> None:
    key = server.key(tenant(), "runner", "reader", "operator", "approver")
    waits: list[float] = []
    with Client(server.base_url, key, sleep=waits.append,
                retry=RetryPolicy(max_attempts=3)) as dvt:
        run = dvt.runs.create(gated_plan())
        events = dvt.runs.stream(run.run_id)
        next(e for e in events if e.event_type == "StepAwaitingApproval")
        for _ in range(SIGNALS_PER_MINUTE // 2):
            dvt.runs.pause(run.run_id)
            next(e for e in events if e.event_type == "RunPaused")
            dvt.runs.resume(run.run_id)
            next(e for e in events if e.event_type == "RunResumed")
        assert waits == []
        with pytest.raises(RateLimited) as limited:
            dvt.runs.approve(run.run_id, "signoff")
        assert limited.value.code == "SIGNAL_RATE_LIMITED"
        assert limited.value.retry_after == 60.0
        assert waits == [60.0, 60.0]  # three sends, each refusal's Retry-After waited
        after = dvt.runs.get(run.run_id)  # the refused approval changed nothing
        assert after.step("signoff").status != "SUCCESS"
        assert not after.is_terminal


def test_create_waits_out_a_store_outage_as_retry_after_says(
        server: ApiServer, db_proxy: TcpProxy) -> None:
    key = server.key(tenant(), "runner", "reader")
    waits: list[float] = []

    def outage_ends_while_waiting(seconds: float) -> None:
        waits.append(seconds)
        db_proxy.refusing = False

    with Client(server.base_url, key, sleep=outage_ends_while_waiting) as dvt:
        db_proxy.refusing = True
        db_proxy.cut()
        run = dvt.runs.create(chain_plan(2))
        # Each 503 carried Retry-After: 60, and the client waited exactly that before sending
        # again (more than once if the service's pool was still reconnecting).
        assert waits
        assert set(waits) == {60.0}
        assert dvt.runs.wait(run.run_id).status == "COMPLETED"
        assert [r.run_id for r in dvt.runs.list()] == [run.run_id]


def test_an_outage_longer_than_the_client_waits_is_a_typed_503(
        server: ApiServer, db_proxy: TcpProxy) -> None:
    key = server.key(tenant(), "runner", "reader")
    with Client(server.base_url, key, retry=RetryPolicy(max_retry_after_s=5)) as dvt:
        db_proxy.refusing = True
        db_proxy.cut()
        try:
            with pytest.raises(ServiceUnavailable) as down:
                dvt.runs.get("any")
        finally:
            db_proxy.refusing = False
        assert down.value.code == "STORE_UNAVAILABLE"
        assert down.value.retry_after == 60.0
