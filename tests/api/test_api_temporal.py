"""End to end on Temporal: runs created over HTTP, signalled and followed to their end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_helpers import ApiServer, start_server, stop_server
from engine_scenarios import cancel_at_the_gate, pause_resume_approve


@pytest.fixture(scope="module")
def temporal_server(api_store_url: str, dvt_temporal_address: str,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """`dvt serve --engine temporal` with its workers, on the plugin's Temporal dev server."""
    tmp = tmp_path_factory.mktemp("api-temporal")
    server = start_server(api_store_url, tmp / "server.log", tmp / "home",
                          "--temporal-address", dvt_temporal_address, engine="temporal")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            assert stop_server(server) == 0


def test_a_gated_run_pauses_resumes_and_completes_on_temporal(
        temporal_server: ApiServer) -> None:
    pause_resume_approve(temporal_server, "temporal")


def test_a_gated_run_is_cancelled_at_its_gate_on_temporal(temporal_server: ApiServer) -> None:
    cancel_at_the_gate(temporal_server, "temporal")
