"""What every fsspec backend shares: the layout, hashing while writing, verified reads, holds.

Layout under a store's root (a directory or ``bucket/prefix``)::

    <root>/sha256/<first two hex digits>/<64 hex digits>   the objects, immutable
    <root>/tmp/<random>                                   uploads in progress

The two-digit fan-out keeps any one directory (or listing prefix) to 1/256 of the objects.
A put of bytes whose object already exists writes nothing. Otherwise the bytes go to a temporary
object first, hashed on the way, and are then published under their hash by the backend's
no-overwrite primitive (a hard link locally, a conditional write on S3), so a reader never
sees a partial object and a second writer of the same bytes never replaces the first.

fsspec filesystems are synchronous here (s3fs runs its own event loop thread behind its sync
API), so every call goes through ``asyncio.to_thread``: the caller's event loop never blocks
and a store works from any loop (test loops, worker loops).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, TypeVar

from fsspec import AbstractFileSystem

from dvt_engine.artifacts import DEFAULT_MEDIA_TYPE, ArtifactData, ArtifactStore
from dvt_engine.errors import ArtifactCorrupt, ArtifactNotFound, ArtifactStoreUnavailable, DvtError
from dvt_engine.models.snapshot import ArtifactRef

T = TypeVar("T")

OBJECTS_DIR = "sha256"
TMP_DIR = "tmp"
#: Bytes handed to the filesystem per write and read: the most a put or read holds at once
#: (besides the backend's own upload buffer).
CHUNK_BYTES = 1024 * 1024
_HEX = frozenset("0123456789abcdef")


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def is_digest(value: str | None) -> bool:
    """Whether ``value`` is a lowercase hex SHA-256."""
    return value is not None and len(value) == 64 and set(value) <= _HEX


class FsspecArtifactStore(ArtifactStore, abc.ABC):
    """An artifact store over one fsspec filesystem, rooted at ``root`` (no trailing slash)."""

    def __init__(self, fs: AbstractFileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")

    # --- what a backend says ------------------------------------------------------------------
    @abc.abstractmethod
    def uri_for(self, digest: str) -> str:
        """The URI an object's ref carries (``file:///...``, ``s3://...``)."""

    @abc.abstractmethod
    def _publish(self, tmp_path: str, path: str, size: int) -> None:
        """Make the finished temporary object ``tmp_path`` the object ``path``, never replacing
        an object already there (which then holds the same bytes), and remove ``tmp_path``."""

    def _store_small(self, body: bytes, digest: str) -> None:
        """Store bytes whose hash is known unless they are there (one worker-thread trip)."""
        if not self._present(digest, len(body)):
            self._put_small(body, self.path_for(digest))

    def _put_small(self, body: bytes, path: str) -> None:
        """Write a small object whose hash is known; the default goes through a temporary."""
        tmp = self._tmp_path()
        self._write_all(tmp, body)
        self._publish(tmp, path, len(body))

    def _unavailable(self, exc: BaseException) -> DvtError:
        """The coded error for a backend failure other than a missing object."""
        return ArtifactStoreUnavailable(
            f"artifact store {self.uri_for('')!r} failed: {type(exc).__name__}: {exc}",
            details={"root": self.uri_for("")})

    #: Exceptions of the backend that mean "unreachable or refused" (OSError always is).
    backend_errors: tuple[type[BaseException], ...] = (OSError,)

    # --- layout ---------------------------------------------------------------------------
    def path_for(self, digest: str) -> str:
        """The filesystem path of the object with hash ``digest``."""
        return f"{self.root}/{OBJECTS_DIR}/{digest[:2]}/{digest}"

    def _tmp_path(self) -> str:
        return f"{self.root}/{TMP_DIR}/{uuid.uuid4().hex}"

    def _ref(self, digest: str, size: int, kind: str, media_type: str) -> ArtifactRef:
        return ArtifactRef(uri=self.uri_for(digest), kind=kind, sha256=digest,
                           size_bytes=size, media_type=media_type)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except DvtError:
            raise
        except self.backend_errors as exc:
            raise self._unavailable(exc) from exc

    # --- the port ---------------------------------------------------------------------------
    async def put(self, data: ArtifactData, *, kind: str,
                  media_type: str = DEFAULT_MEDIA_TYPE) -> ArtifactRef:
        """Store ``data`` under its SHA-256 (nothing is written when it is there already)."""
        if isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
            # hashlib releases the GIL: a large object is hashed off the event loop.
            digest = (_sha256(body) if len(body) <= CHUNK_BYTES
                      else await asyncio.to_thread(_sha256, body))
            await self._call(self._store_small, body, digest)
            return self._ref(digest, len(body), kind, media_type)
        digest, size = await self._put_stream(data)
        return self._ref(digest, size, kind, media_type)

    async def _put_stream(self, data: AsyncIterable[bytes]) -> tuple[str, int]:
        """Hash and write the chunks; a short stream is put as bytes, a long one goes to a
        temporary object while it is hashed and is published under its hash at the end."""
        chunks = aiter(data)
        head: list[bytes] = []
        buffered = 0
        async for chunk in chunks:
            head.append(bytes(chunk))
            buffered += len(chunk)
            if buffered > CHUNK_BYTES:
                break
        else:
            body = b"".join(head)
            digest = hashlib.sha256(body).hexdigest()
            await self._call(self._store_small, body, digest)
            return digest, len(body)
        hasher = hashlib.sha256()
        size = 0
        tmp = self._tmp_path()
        file = await self._call(self._open_write, tmp)
        try:
            pending = head
            async for chunk in chunks:
                pending.append(bytes(chunk))
                buffered += len(chunk)
                if buffered >= CHUNK_BYTES:
                    size += await self._write(file, hasher, pending)
                    pending, buffered = [], 0
            size += await self._write(file, hasher, pending)
            await self._call(self._close_write, file)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self._discard, file, tmp))
            raise
        digest = hasher.hexdigest()
        try:
            if await self._call(self._present, digest, size):
                await self._call(self._remove, tmp)
            else:
                await self._call(self._publish, tmp, self.path_for(digest), size)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self._remove, tmp))
            raise
        return digest, size

    async def _write(self, file: Any, hasher: Any, pending: list[bytes]) -> int:
        if not pending:
            return 0
        block = b"".join(pending)
        hasher.update(block)
        await self._call(file.write, block)
        return len(block)

    async def read(self, ref: ArtifactRef) -> AsyncIterator[bytes]:
        """The object's bytes in chunks, hashed on the way; ArtifactCorrupt at the end if they
        do not match ``ref``, ArtifactNotFound when this store has no such object."""
        path = self._own_path(ref)
        opened = await self._call(self._open_read, path)
        if opened is None:
            raise self._not_found(ref)
        file, chunk = opened
        hasher = hashlib.sha256()
        size = 0
        try:
            while chunk:
                hasher.update(chunk)
                size += len(chunk)
                yield chunk
                chunk = await self._call(file.read, CHUNK_BYTES) if file is not None else b""
        finally:
            if file is not None:
                await asyncio.to_thread(file.close)
        digest = hasher.hexdigest()
        if digest != ref.sha256 or (ref.size_bytes is not None and size != ref.size_bytes):
            raise ArtifactCorrupt(
                f"artifact {ref.uri} does not match its reference",
                details={"uri": ref.uri, "expectedSha256": ref.sha256, "actualSha256": digest,
                         "expectedSizeBytes": ref.size_bytes, "actualSizeBytes": size})

    async def holds(self, ref: ArtifactRef) -> bool:
        """True when the ref names an object of this store that is here with the ref's size."""
        if not is_digest(ref.sha256) or ref.uri != self.uri_for(ref.sha256 or ""):
            return False
        size = await self._call(self._size, self.path_for(ref.sha256 or ""))
        return size is not None and (ref.size_bytes is None or size == ref.size_bytes)

    # --- filesystem steps (run in a worker thread) -----------------------------------------
    def _own_path(self, ref: ArtifactRef) -> str:
        if not is_digest(ref.sha256) or ref.uri != self.uri_for(ref.sha256 or ""):
            raise self._not_found(ref)
        return self.path_for(ref.sha256 or "")

    @staticmethod
    def _not_found(ref: ArtifactRef) -> ArtifactNotFound:
        return ArtifactNotFound(f"no artifact {ref.uri}", details={"uri": ref.uri})

    def _size(self, path: str) -> int | None:
        try:
            return int(self.fs.info(path)["size"])
        except FileNotFoundError:
            return None

    def _present(self, digest: str, size: int) -> bool:
        """Whether the object is there; ArtifactCorrupt when it is there with another size."""
        found = self._size(self.path_for(digest))
        if found is None:
            return False
        if found != size:
            raise ArtifactCorrupt(
                f"artifact {self.uri_for(digest)} is stored with {found} bytes, not {size}: it"
                " was changed at rest and is never overwritten",
                details={"uri": self.uri_for(digest), "storedSizeBytes": found,
                         "sizeBytes": size})
        return True

    def _open_read(self, path: str) -> tuple[Any, bytes] | None:
        """The open file and its first chunk (one trip to a worker thread for a small object,
        which is then closed already: the file is None); None when there is no object."""
        try:
            file = self.fs.open(path, "rb")
        except FileNotFoundError:
            return None
        try:
            first = file.read(CHUNK_BYTES)
        except BaseException:
            file.close()
            raise
        if len(first) < CHUNK_BYTES:
            file.close()
            return None, first
        return file, first

    def _open_write(self, path: str) -> Any:
        return self.fs.open(path, "wb")

    def _close_write(self, file: Any) -> None:
        file.close()

    def _write_all(self, path: str, body: bytes) -> None:
        file = self._open_write(path)
        try:
            file.write(body)
            self._close_write(file)
        except BaseException:
            self._discard(file, path)
            raise

    def _discard(self, file: Any, path: str) -> None:
        """Best effort: abandon a temporary object that will not be published."""
        with contextlib.suppress(Exception):  # the original error is the one to report
            file.close()
        self._remove(path)

    def _remove(self, path: str) -> None:
        with contextlib.suppress(Exception):  # a leftover temporary is harmless
            self.fs.rm_file(path)
