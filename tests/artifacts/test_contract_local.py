"""The local-directory artifact store against the artifact store contract."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contract_tests.artifact_suite import ArtifactStoreContractSuite, AtRest
from dvt_artifacts.local import LocalArtifactStore
from dvt_engine.artifacts import ArtifactStore
from dvt_engine.models.snapshot import ArtifactRef
from dvt_engine.plugins import open_artifact_store


class LocalAtRest(AtRest):
    """The store's directory, reached with plain file operations."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, ref: ArtifactRef) -> Path:
        assert ref.sha256 is not None
        return self.root / "sha256" / ref.sha256[:2] / ref.sha256

    def flip_byte(self, ref: ArtifactRef, offset: int = 0) -> None:
        path = self._path(ref)
        os.chmod(path, 0o644)  # published objects are read-only
        with path.open("r+b") as file:
            file.seek(offset)
            byte = file.read(1)
            file.seek(offset)
            file.write(bytes([byte[0] ^ 0xFF]))

    def remove(self, ref: ArtifactRef) -> None:
        self._path(ref).unlink()

    def names(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())


class TestLocalArtifactStoreContract(ArtifactStoreContractSuite):
    """The contract on LocalArtifactStore, opened by URL through its entry point."""

    @pytest.fixture
    async def artifacts(self, tmp_path: Path) -> AsyncIterator[ArtifactStore]:
        store = await open_artifact_store((tmp_path / "a").as_uri())
        assert isinstance(store, LocalArtifactStore)
        yield store
        await store.close()

    @pytest.fixture
    async def other_artifacts(self, tmp_path: Path) -> ArtifactStore:
        return await open_artifact_store((tmp_path / "b").as_uri())

    @pytest.fixture
    def at_rest(self, tmp_path: Path) -> AtRest:
        return LocalAtRest(tmp_path / "a")


async def test_published_objects_are_read_only(tmp_path: Path) -> None:
    store = await open_artifact_store(tmp_path.as_uri())
    ref = await store.put(b"frozen", kind="blob")
    path = LocalAtRest(tmp_path)._path(ref)
    assert path.stat().st_mode & 0o222 == 0
    assert ref.uri == path.as_uri()
