"""A real `dvt serve` process per test module, on a fresh PostgreSQL schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import ApiServer, start_server, stop_server

from dvt_statestore_pg.testing import schema_store_url


@pytest.fixture(scope="module")
def api_store_url(dvt_postgres_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A store URL on a schema of its own for one test module."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    with schema_store_url(dvt_postgres_dsn, prefix=f"dvt_{name}") as url:
        yield url


@pytest.fixture(scope="module")
def api_server(api_store_url: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[ApiServer]:
    """`dvt serve --engine reference` on a free port of 127.0.0.1, stopped afterwards."""
    tmp = tmp_path_factory.mktemp("api")
    server = start_server(api_store_url, tmp / "server.log", tmp / "home")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            # A graceful stop exits 0; the "service stopped" line proves store and engine
            # were closed first.
            assert stop_server(server) == 0
            assert '"msg": "service stopped"' in server.log_text()


@pytest.fixture
def server_log(api_server: ApiServer) -> Path:
    """Where the server writes its log lines."""
    return api_server.log_path
