"""The in-memory twin against the artifact store contract."""

from __future__ import annotations

import pytest

from contract_tests.artifact_suite import ArtifactStoreContractSuite, AtRest
from dvt_engine.models.snapshot import ArtifactRef
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore


class MemoryAtRest(AtRest):
    """The twin's dict, reached directly."""

    def __init__(self, store: MemoryArtifactStore) -> None:
        self.store = store

    def flip_byte(self, ref: ArtifactRef, offset: int = 0) -> None:
        body = bytearray(self.store.objects[ref.sha256 or ""])
        body[offset] ^= 0xFF
        self.store.objects[ref.sha256 or ""] = bytes(body)

    def remove(self, ref: ArtifactRef) -> None:
        del self.store.objects[ref.sha256 or ""]

    def names(self) -> list[str]:
        return sorted(f"sha256/{d[:2]}/{d}" for d in self.store.objects)


class TestMemoryArtifactStoreContract(ArtifactStoreContractSuite):
    """The contract on MemoryArtifactStore (it holds objects whole: memory is not bounded)."""

    bounded_memory = False

    @pytest.fixture
    def artifacts(self) -> MemoryArtifactStore:
        return MemoryArtifactStore()

    @pytest.fixture
    def other_artifacts(self) -> MemoryArtifactStore:
        return MemoryArtifactStore("memory://elsewhere")

    @pytest.fixture
    def at_rest(self, artifacts: MemoryArtifactStore) -> AtRest:
        return MemoryAtRest(artifacts)


async def test_twins_of_one_name_give_equal_refs_and_of_two_names_do_not() -> None:
    first, second = MemoryArtifactStore(), MemoryArtifactStore("memory://")
    ref = await first.put(b"same", kind="blob")
    assert await second.put(b"same", kind="blob") == ref
    assert ref.uri.startswith("memory://artifacts/sha256/")
    other = MemoryArtifactStore("memory://reports")
    assert not await other.holds(ref)
    assert (await other.put(b"same", kind="blob")).uri.startswith("memory://reports/")
