"""The artifact store port: immutable, content-addressed bytes that steps produce.

An artifact is named by the SHA-256 of its bytes, so the same bytes always give the same
reference (a retried step or a run replayed on another engine records equal refs), nothing is
ever overwritten, and a reader can tell a changed object from the one that was written. Events
carry only the reference (:class:`~dvt_engine.models.snapshot.ArtifactRef`), never the bytes.
Backends live at the edge; the core ships the in-memory twin
(:mod:`dvt_engine.stores.memory_artifacts`).
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import AsyncIterable, AsyncIterator

from dvt_engine.errors import ArtifactCorrupt
from dvt_engine.models.snapshot import ArtifactRef

__all__ = ["DEFAULT_MEDIA_TYPE", "ArtifactData", "ArtifactRef", "ArtifactStore", "verified"]

DEFAULT_MEDIA_TYPE = "application/octet-stream"

#: What ``put`` accepts: the whole object, or chunks of it (a large file, a result set).
ArtifactData = bytes | AsyncIterable[bytes]


class ArtifactStore(abc.ABC):
    """Content-addressed, write-once storage of step artifacts."""

    @abc.abstractmethod
    async def put(self, data: ArtifactData, *, kind: str,
                  media_type: str = DEFAULT_MEDIA_TYPE) -> ArtifactRef:
        """Store ``data`` (idempotent: the same bytes give the same ref) and return its ref."""

    @abc.abstractmethod
    def read(self, ref: ArtifactRef) -> AsyncIterator[bytes]:
        """The object's bytes in chunks; ArtifactCorrupt at the end if they do not match."""

    @abc.abstractmethod
    async def holds(self, ref: ArtifactRef) -> bool:
        """True when this store has the object ``ref`` names (same uri, size and hash)."""

    async def get(self, ref: ArtifactRef) -> bytes:
        """The whole object, verified against its hash (ArtifactNotFound, ArtifactCorrupt)."""
        return b"".join([chunk async for chunk in self.read(ref)])

    async def close(self) -> None:
        """Release connections; the default holds none."""
        return None


def verified(ref: ArtifactRef, data: bytes) -> bytes:
    """``data`` if it hashes to ``ref.sha256`` and has its size, else ArtifactCorrupt."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256 or (ref.size_bytes is not None and len(data) != ref.size_bytes):
        raise ArtifactCorrupt(
            f"artifact {ref.uri} does not match its reference",
            details={"uri": ref.uri, "expectedSha256": ref.sha256, "actualSha256": digest})
    return data
