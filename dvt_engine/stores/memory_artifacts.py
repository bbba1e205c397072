"""The in-memory artifact store: the port's twin for host tests and the memory store.

Objects live in a dict keyed by hash for the life of the process; it is a complete
implementation of the port (same refs, verification, refusal of unknown refs), not a stub.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from dvt_engine.artifacts import DEFAULT_MEDIA_TYPE, ArtifactData, ArtifactStore, verified
from dvt_engine.errors import ArtifactNotFound, UsageError
from dvt_engine.models.snapshot import ArtifactRef

URI_PREFIX = "memory://artifacts/sha256/"


class MemoryArtifactStore(ArtifactStore):
    """Artifacts kept in process memory, addressed by SHA-256."""

    def __init__(self, url: str = "memory://") -> None:
        if not url.startswith("memory:"):
            raise UsageError(f"the memory artifact store opens memory:// URLs, not {url!r}")
        self.objects: dict[str, bytes] = {}

    async def put(self, data: ArtifactData, *, kind: str,
                  media_type: str = DEFAULT_MEDIA_TYPE) -> ArtifactRef:
        """Store ``data`` under its hash and return its ref."""
        body = data if isinstance(data, bytes) else b"".join([chunk async for chunk in data])
        digest = hashlib.sha256(body).hexdigest()
        self.objects.setdefault(digest, body)
        return ArtifactRef(uri=URI_PREFIX + digest, kind=kind, sha256=digest,
                           size_bytes=len(body), media_type=media_type)

    async def read(self, ref: ArtifactRef) -> AsyncIterator[bytes]:
        """The object's bytes, verified."""
        yield verified(ref, self._body(ref))

    async def holds(self, ref: ArtifactRef) -> bool:
        """True when the object is here with the ref's size."""
        body = self.objects.get(ref.sha256 or "")
        return (body is not None and ref.uri == URI_PREFIX + (ref.sha256 or "")
                and (ref.size_bytes is None or ref.size_bytes == len(body)))

    def _body(self, ref: ArtifactRef) -> bytes:
        if not ref.uri.startswith(URI_PREFIX) or ref.sha256 is None:
            raise ArtifactNotFound(f"no artifact {ref.uri}", details={"uri": ref.uri})
        body = self.objects.get(ref.uri.removeprefix(URI_PREFIX))
        if body is None:
            raise ArtifactNotFound(f"no artifact {ref.uri}", details={"uri": ref.uri})
        return body
