"""The in-memory store against the shared store contract suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from contract_tests.store_concurrency import ConcurrencyHooks, StoreConcurrencySuite
from contract_tests.store_suite import StoreContractSuite, StoreFactory
from dvt_engine.ports import RunStateStore
from dvt_engine.stores.memory import MemoryRunStateStore


class TestMemoryStoreContract(StoreContractSuite):
    """Contract §5 on MemoryRunStateStore."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[RunStateStore]:
        async with MemoryRunStateStore() as store:
            yield store

    @pytest.fixture
    def store_factory(self, store: RunStateStore) -> StoreFactory:
        # One process holds the memory store: the second writer is the same instance.
        async def same() -> RunStateStore:
            return store

        return same


class TestMemoryStoreConcurrency(StoreConcurrencySuite):
    """The tenant stream under racing writers, on MemoryRunStateStore."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[RunStateStore]:
        async with MemoryRunStateStore() as store:
            yield store

    @pytest.fixture
    def store_factory(self, store: RunStateStore) -> StoreFactory:
        async def same() -> RunStateStore:
            return store

        return same

    @pytest.fixture
    def concurrency_hooks(self) -> ConcurrencyHooks:
        return ConcurrencyHooks()
