"""End to end on Conductor: runs created over HTTP, signalled and followed to their end.

One module: the Conductor server costs 40-60 s to start, once per test session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_helpers import ApiServer, start_server, stop_server
from engine_scenarios import cancel_at_the_gate, pause_resume_approve


@pytest.fixture(scope="module")
def conductor_server(api_store_url: str, dvt_conductor_url: str,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """`dvt serve --engine conductor` with its workers, on the plugin's Conductor server."""
    tmp = tmp_path_factory.mktemp("api-conductor")
    server = start_server(api_store_url, tmp / "server.log", tmp / "home",
                          "--conductor-url", dvt_conductor_url, engine="conductor")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            assert stop_server(server) == 0


def test_a_gated_run_pauses_resumes_and_completes_on_conductor(
        conductor_server: ApiServer) -> None:
    pause_resume_approve(conductor_server, "conductor")


def test_a_gated_run_is_cancelled_at_its_gate_on_conductor(conductor_server: ApiServer) -> None:
    cancel_at_the_gate(conductor_server, "conductor")
