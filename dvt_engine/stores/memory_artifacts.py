"""The in-memory artifact store: the port's twin for host tests and the memory store.

Objects live in a dict keyed by hash for the life of the instance; it is a complete
implementation of the port (same refs, verification, refusal of unknown refs), not a stub.
Its URIs are ``memory://<name>/sha256/<aa>/<hex>``, the name taken from the URL it is opened
with (``memory://reports``) and ``artifacts`` by default. Twins of different names hold only
their own refs, like two buckets; twins of the same name give the same refs for the same
bytes, so runs on two engines each with its own default twin record equal refs (parity).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from dvt_engine.artifacts import DEFAULT_MEDIA_TYPE, ArtifactData, ArtifactStore, verified
from dvt_engine.errors import ArtifactNotFound, UsageError
from dvt_engine.models.snapshot import ArtifactRef

DEFAULT_NAME = "artifacts"


class MemoryArtifactStore(ArtifactStore):
    """Artifacts kept in process memory, addressed by SHA-256."""

    def __init__(self, url: str = "memory://") -> None:
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise UsageError(f"the memory artifact store opens memory:// URLs, not {url!r}")
        self.name = parts.netloc or DEFAULT_NAME
        self.objects: dict[str, bytes] = {}

    def uri_for(self, digest: str) -> str:
        """``memory://<name>/sha256/<aa>/<digest>``."""
        return f"memory://{self.name}/sha256/{digest[:2]}/{digest}"

    async def put(self, data: ArtifactData, *, kind: str,
                  media_type: str = DEFAULT_MEDIA_TYPE) -> ArtifactRef:
        """Store ``data`` under its hash (an object already there is kept) and return its ref."""
        body = data if isinstance(data, bytes) else b"".join([chunk async for chunk in data])
        digest = hashlib.sha256(body).hexdigest()
        self.objects.setdefault(digest, body)
        return ArtifactRef(uri=self.uri_for(digest), kind=kind, sha256=digest,
                           size_bytes=len(body), media_type=media_type)

    async def read(self, ref: ArtifactRef) -> AsyncIterator[bytes]:
        """The object's bytes, verified."""
        yield verified(ref, self._body(ref))

    async def holds(self, ref: ArtifactRef) -> bool:
        """True when the ref names an object of this twin that is here with the ref's size."""
        if ref.sha256 is None or ref.uri != self.uri_for(ref.sha256):
            return False
        body = self.objects.get(ref.sha256)
        return body is not None and (ref.size_bytes is None or ref.size_bytes == len(body))

    def _body(self, ref: ArtifactRef) -> bytes:
        body = None
        if ref.sha256 is not None and ref.uri == self.uri_for(ref.sha256):
            body = self.objects.get(ref.sha256)
        if body is None:
            raise ArtifactNotFound(f"no artifact {ref.uri}", details={"uri": ref.uri})
        return body
