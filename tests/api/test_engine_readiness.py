"""A real engine server stopped under a real `dvt serve`: the service's dvt_engine_up gauge
crosses the EngineDown rule's threshold and /readyz answers 503 naming the engine. Temporal is
also started again on the same port, and both recover (Conductor's restart costs 30-130 s here,
so its test stops at the drop).

Each engine server is this module's own (not the session's shared one, which other tests use),
so stopping it disturbs nobody.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_helpers import REPO, ApiServer, start_server, stop_server

from dvt_local import temporal as local_temporal
from dvt_local.conductor import ConductorServer

RULES = REPO / "deploy" / "prometheus" / "dvt-alerts.yml"
#: Bound on waiting for the probe's cache (5 s) plus a probe (2 s) to show a change.
CHANGE_WITHIN_S = 60.0


def _threshold() -> float:
    """The number EngineDown compares ``min by (job, engine) (dvt_engine_up)`` with."""
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    expr = next(str(r["expr"]) for r in rules if r["alert"] == "EngineDown")
    match = re.search(r"min by \(job, engine\) \(dvt_engine_up\)\s*<\s*(\d+)", expr)
    assert match, expr
    return float(match.group(1))


def _engine_up(server: ApiServer, engine: str) -> float:
    text = httpx.get(server.base_url + "/metrics", timeout=30).text
    match = re.search(rf'^dvt_engine_up{{engine="{engine}"}} (\S+)$', text, flags=re.M)
    assert match, "dvt_engine_up is not exported"
    return float(match.group(1))


def _readyz(server: ApiServer) -> httpx.Response:
    return httpx.get(server.base_url + "/readyz", timeout=30)


def _until(what: str, check: Callable[[], Any]) -> Any:
    """Poll ``check`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + CHANGE_WITHIN_S
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {CHANGE_WITHIN_S} s"
        time.sleep(0.2)  # polling interval of the endpoint, not a synchronisation wait


@pytest.fixture(scope="module")
def temporal_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This module's own Temporal dev server (in memory), stopped afterwards."""
    state = tmp_path_factory.mktemp("temporal")
    local_temporal.dev_server_up(state, in_memory=True, die_with_parent=True)
    try:
        yield state
    finally:
        local_temporal.stop_dev_server(state)


@pytest.fixture(scope="module")
def server(api_store_url: str, temporal_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """`dvt serve --engine temporal` on the module's Temporal server."""
    record = local_temporal.read_dev_server(temporal_dir)
    assert record is not None
    tmp = tmp_path_factory.mktemp("ready")
    started = start_server(api_store_url, tmp / "server.log", tmp / "home",
                           "--temporal-address", f"{record.host}:{record.port}",
                           engine="temporal")
    try:
        yield started
    finally:
        if started.process.poll() is None:
            assert stop_server(started) == 0


def test_stopping_temporal_drops_the_gauge_and_readiness(server: ApiServer,
                                                         temporal_dir: Path) -> None:
    threshold = _threshold()
    record = local_temporal.read_dev_server(temporal_dir)
    assert record is not None
    ready = _readyz(server)
    assert ready.status_code == 200, ready.text
    assert ready.json()["engine"] == "temporal"
    assert _engine_up(server, "temporal") >= threshold  # healthy: no alert

    assert local_temporal.stop_dev_server(temporal_dir)
    _until("gauge below the EngineDown threshold",
           lambda: _engine_up(server, "temporal") < threshold)
    down = _until("/readyz 503", lambda: (r := _readyz(server)).status_code == 503 and r)
    body = down.json()
    assert body["status"] == "unavailable"
    assert body["checks"] == {"store": "ok", "engine": "unavailable"}
    assert body["engine"] == "temporal"
    assert body["engineReason"] == "ENGINE_UNAVAILABLE"

    # Back on the same port: the service's next probe sees it, with no restart of its own.
    local_temporal.dev_server_up(temporal_dir, port=record.port, in_memory=True,
                                 die_with_parent=True)
    _until("gauge back to 1", lambda: _engine_up(server, "temporal") == 1)
    assert _until("/readyz 200", lambda: _readyz(server).status_code == 200)


@pytest.fixture(scope="module")
def conductor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConductorServer]:
    """This module's own Conductor server, stopped afterwards (the test stops it earlier)."""
    with ConductorServer(data_dir=tmp_path_factory.mktemp("conductor")) as srv:
        yield srv


def test_stopping_conductor_drops_the_gauge_and_readiness(
        api_store_url: str, conductor: ConductorServer,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    threshold = _threshold()
    tmp = tmp_path_factory.mktemp("ready-conductor")
    server = start_server(api_store_url, tmp / "server.log", tmp / "home",
                          "--conductor-url", conductor.api_url, engine="conductor")
    try:
        ready = _readyz(server)
        assert ready.status_code == 200, ready.text
        assert ready.json()["engine"] == "conductor"
        assert _engine_up(server, "conductor") >= threshold

        conductor.stop()
        _until("gauge below the EngineDown threshold",
               lambda: _engine_up(server, "conductor") < threshold)
        body = _until("/readyz 503",
                      lambda: (r := _readyz(server)).status_code == 503 and r).json()
        assert body["checks"] == {"store": "ok", "engine": "unavailable"}
        assert body["engine"] == "conductor"
        assert body["engineReason"] == "ENGINE_UNAVAILABLE"
    finally:
        assert stop_server(server) == 0
