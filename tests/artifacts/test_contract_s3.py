"""The S3 artifact store against the artifact store contract, on a real S3Proxy server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import s3fs

from contract_tests.artifact_suite import ArtifactStoreContractSuite, AtRest
from dvt_artifacts.s3 import S3ArtifactStore
from dvt_engine.artifacts import ArtifactStore
from dvt_engine.models.snapshot import ArtifactRef
from dvt_engine.plugins import open_artifact_store
from dvt_local.s3 import S3Server


def raw_fs(server: S3Server) -> s3fs.S3FileSystem:
    """An s3fs client of the server that the store under test does not share."""
    o = server.client_options()
    return s3fs.S3FileSystem(key=o["access_key_id"], secret=o["secret_access_key"],
                             endpoint_url=o["endpoint_url"], skip_instance_cache=True,
                             use_listings_cache=False)


class S3AtRest(AtRest):
    """The bucket, reached with a separate s3fs client."""

    def __init__(self, server: S3Server, url: str) -> None:
        self.fs = raw_fs(server)
        self.root = url.removeprefix("s3://")

    def _key(self, ref: ArtifactRef) -> str:
        assert ref.sha256 is not None
        return f"{self.root}/sha256/{ref.sha256[:2]}/{ref.sha256}"

    def flip_byte(self, ref: ArtifactRef, offset: int = 0) -> None:
        body = bytearray(self.fs.cat_file(self._key(ref)))
        body[offset] ^= 0xFF
        self.fs.pipe_file(self._key(ref), bytes(body))

    def remove(self, ref: ArtifactRef) -> None:
        self.fs.rm_file(self._key(ref))

    def names(self) -> list[str]:
        return sorted(p.removeprefix(self.root + "/") for p in self.fs.find(self.root))


class TestS3ArtifactStoreContract(ArtifactStoreContractSuite):
    """The contract on S3ArtifactStore against the session's S3Proxy server."""

    @pytest.fixture
    def artifacts(self, dvt_s3_artifact_store: ArtifactStore) -> ArtifactStore:
        assert isinstance(dvt_s3_artifact_store, S3ArtifactStore)
        return dvt_s3_artifact_store

    @pytest.fixture
    async def other_artifacts(self, dvt_s3_server: S3Server,
                              dvt_s3_artifacts_url: str) -> AsyncIterator[ArtifactStore]:
        store = await open_artifact_store(dvt_s3_artifacts_url + "-other",
                                          **dvt_s3_server.client_options())
        yield store
        await store.close()

    @pytest.fixture
    def at_rest(self, dvt_s3_server: S3Server, dvt_s3_artifacts_url: str) -> AtRest:
        return S3AtRest(dvt_s3_server, dvt_s3_artifacts_url)
