"""The reference engine rides out a PostgreSQL outage in the middle of a run.

The store is reached through a real TCP proxy. A step cuts every connection and makes the proxy
refuse new ones, so the write of its own outcome fails; once the store has given up (after its
own retries) and the run's driver is waiting to try again, the proxy lets connections through.
The run must then complete with a log that has no gap, no duplicate and a snapshot equal to a
replay of the log: a failed write is tried again, never dropped and never repeated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from tcp_proxy import TcpProxy

from benchmarks.load.verify import log_problems
from dvt_engine import Client, HandlerRegistry, PlanBuilder
from dvt_engine.checksum import snapshot_checksum
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.models.run import RunStatus
from dvt_engine.models.signals import Actor, Role
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_engine.projector import project
from dvt_engine.steps import builtin_registry
from dvt_engine.waiting import wait_for_terminal
from dvt_statestore_pg.store import PostgresRunStateStore

TENANT = "outage"
REFUSALS = 3


def _through(store_url: str, proxy: TcpProxy) -> str:
    """The store URL with the proxy's address instead of the database's, and a 1 s pool wait."""
    parts = urlsplit(store_url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    url = urlunsplit(parts._replace(netloc=user + proxy.url.removeprefix("http://")))
    return url + ("&" if "?" in url else "?") + "timeout=1"


class StartsAnOutage(StepHandler):
    """The first time it runs, takes the database away: every connection cut, new ones refused."""

    kind = "outage"

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.calls = 0

    async def run(self, ctx: StepContext) -> StepResult:
        """Start the outage once; succeed."""
        self.calls += 1
        if self.calls == 1:
            self.proxy.refusing = True
            self.proxy.cut()
        return StepResult(output={"calls": self.calls})


async def _until(condition: object, within_s: float) -> None:
    """Wait until ``condition()`` is true (checked every 10 ms), failing after ``within_s``."""
    deadline = time.monotonic() + within_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_run_completes_through_a_store_outage_with_a_whole_log(
        pg_store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    parts = urlsplit(pg_store_url)
    proxy = TcpProxy(f"http://{parts.hostname}:{parts.port}")
    outage = StartsAnOutage(proxy)
    registry: HandlerRegistry = builtin_registry()
    registry.register(outage.kind, outage)
    proxied = await PostgresRunStateStore.open(_through(pg_store_url, proxy))
    direct = await PostgresRunStateStore.open(pg_store_url)
    engine = ReferenceEngine(proxied, registry=registry)
    plan = (PlanBuilder("outage", "1").step("before", "noop").step("cut", "outage",
            depends_on=["before"]).step("after", "echo", params={"x": 1}, depends_on=["cut"])
            .build())
    caplog.set_level(logging.WARNING, logger="dvt_engine.engines.reference")
    try:
        client = Client(engine=engine, store=proxied, tenant=TENANT,
                        actor=Actor(id="host", roles=(Role.ADMIN,)))
        handle = await client.start_run(plan, run_id="through-outage")
        # The store retries a lost connection for its own timeout (1 s here) and then says it
        # is unavailable; end the outage only after the run's driver was told so and waits.
        await _until(lambda: _driver_waited(caplog), within_s=60)
        proxy.refusing = False
        done = await wait_for_terminal(direct, TENANT, handle.run_id, timeout=60)
    finally:
        proxy.refusing = False
        await engine.close()
        await proxied.close()
    try:
        events = await direct.fetch_events(TENANT, handle.run_id)
        header = await direct.get_run(TENANT, handle.run_id)
    finally:
        await direct.close()
        proxy.close()
    assert done.status == RunStatus.COMPLETED
    assert done.step("after").output == {"x": 1}
    assert log_problems(handle.run_id, events, ["before", "cut", "after"]) == []
    assert [e.run_seq for e in events] == list(range(1, len(events) + 1))
    assert header is not None
    assert snapshot_checksum(project(header, events)) == snapshot_checksum(done)
    assert proxy.refused >= REFUSALS


def _driver_waited(caplog: pytest.LogCaptureFixture) -> bool:
    return any("the run's driver tries again" in r.getMessage() for r in caplog.records)
