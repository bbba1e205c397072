"""The PostgreSQL store against the shared store contract suite, on a real server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from contract_tests.store_suite import StoreContractSuite, StoreFactory
from dvt_engine.ports import RunStateStore
from dvt_statestore_pg.store import PostgresRunStateStore


class TestPostgresStoreContract(StoreContractSuite):
    """Contract §5 on PostgresRunStateStore."""

    @pytest.fixture
    def store(self, pg_store: PostgresRunStateStore) -> RunStateStore:
        return pg_store

    @pytest.fixture
    def store_factory(
        self, pg_store_factory: Callable[[], Awaitable[PostgresRunStateStore]]
    ) -> StoreFactory:
        return pg_store_factory  # type: ignore[return-value]
