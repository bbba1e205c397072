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
        return MemoryArtifactStore()

    @pytest.fixture
    def at_rest(self, artifacts: MemoryArtifactStore) -> AtRest:
        return MemoryAtRest(artifacts)
