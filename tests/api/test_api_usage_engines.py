"""The same costHint plan meters identical units on the reference engine, Temporal and
Conductor: costHint units do not depend on engine timing (real servers, one store)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import ApiServer, start_server, stop_server, tenant
from usage_helpers import run_to_the_end, window


def _serve(url: str, tmp: Any, *extra: str, engine: str = "reference") -> Iterator[ApiServer]:
    server = start_server(url, tmp / "server.log", tmp / "home", *extra, engine=engine)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            assert stop_server(server) == 0


@pytest.fixture(scope="module")
def reference_server(api_store_url: str, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[ApiServer]:
    """`dvt serve --engine reference`."""
    yield from _serve(api_store_url, tmp_path_factory.mktemp("usage-ref"))


def _metered(server: ApiServer) -> dict[str, Any]:
    """Two hinted runs of a fresh tenant, then its usage by run."""
    with server.client(server.key(tenant(), "runner", "reader")) as c:
        for run_id in ("p1", "p2"):
            run_to_the_end(c, run_id)
        answer = c.get("/v1/usage", params={**window(), "groupBy": "run"})
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found


EXPECTED = [{"key": run_id, "runs": 1, "computeUnits": 5.5, "dataUnits": 0, "totalUnits": 6.5}
            for run_id in ("p1", "p2")]


def test_temporal_meters_what_the_reference_engine_meters(
        reference_server: ApiServer, api_store_url: str, dvt_temporal_address: str,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    reference = _metered(reference_server)
    assert reference["items"] == EXPECTED
    for server in _serve(api_store_url, tmp_path_factory.mktemp("usage-temporal"),
                         "--temporal-address", dvt_temporal_address, engine="temporal"):
        assert _metered(server) == reference


def test_conductor_meters_what_the_reference_engine_meters(
        reference_server: ApiServer, api_store_url: str, dvt_conductor_url: str,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    reference = _metered(reference_server)
    for server in _serve(api_store_url, tmp_path_factory.mktemp("usage-conductor"),
                         "--conductor-url", dvt_conductor_url, engine="conductor"):
        assert _metered(server) == reference
