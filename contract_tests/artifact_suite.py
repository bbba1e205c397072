"""The artifact store contract, as one abstract test class every backend subclasses.

A backend's test module subclasses ``ArtifactStoreContractSuite`` and provides fixtures:

- ``artifacts``: an open, empty store (its own directory, prefix or instance);
- ``other_artifacts``: a second store of the same backend elsewhere (another root);
- ``at_rest``: an :class:`AtRest` that reaches the stored objects behind the store's back,
  to damage or remove them and to list what is stored.

And one class attribute: ``bounded_memory``, whether a put or read of a large object must
stay within ``MEMORY_BOUND_BYTES`` of Python allocations (the in-memory twin holds every
object whole, so it says False and the test checks that it still stores the object right).
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from dvt_engine.artifacts import ArtifactStore
from dvt_engine.errors import ArtifactCorrupt, ArtifactNotFound
from dvt_engine.models.snapshot import ArtifactRef

LARGE_BYTES = 50 * 1024 * 1024
#: Python allocations a put or read of LARGE_BYTES may peak at: a few chunks and an upload
#: part with the client's copies of it, well below the object (a put or read holding the
#: object whole peaks above LARGE_BYTES).
MEMORY_BOUND_BYTES = 32 * 1024 * 1024
CONCURRENT_PUTS = 20


class AtRest(abc.ABC):
    """The stored objects as the backend keeps them, bypassing the store."""

    @abc.abstractmethod
    def flip_byte(self, ref: ArtifactRef, offset: int = 0) -> None:
        """Change one byte of the stored object (its size stays)."""

    @abc.abstractmethod
    def remove(self, ref: ArtifactRef) -> None:
        """Delete the stored object."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Every stored name under the store's root, objects and temporaries alike."""


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    """``data`` as an async stream of ``size``-byte chunks."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def generated(total: int, chunk: int = 1024 * 1024) -> AsyncIterator[bytes]:
    """``total`` deterministic bytes, made chunk by chunk (never whole in memory)."""
    block = hashlib.sha256(b"dvt").digest() * (chunk // 32)
    for index in range(0, total, chunk):
        yield bytes([index // chunk % 251]) + block[1:min(chunk, total - index)]


async def expected_digest(total: int) -> str:
    """The SHA-256 of ``generated(total)``."""
    hasher = hashlib.sha256()
    async for chunk in generated(total):
        hasher.update(chunk)
    return hasher.hexdigest()


class ArtifactStoreContractSuite:
    """What every ArtifactStore does. Not collected itself: subclass it."""

    bounded_memory: ClassVar[bool] = True

    # --- content addressing ---------------------------------------------------------------
    async def test_same_bytes_give_the_same_ref(self, artifacts: ArtifactStore) -> None:
        body = os.urandom(1000)
        first = await artifacts.put(body, kind="csv", media_type="text/csv")
        again = await artifacts.put(body, kind="csv", media_type="text/csv")
        streamed = await artifacts.put(chunks_of(body, 7), kind="csv", media_type="text/csv")
        assert first == again == streamed
        other = await artifacts.put(body + b"!", kind="csv", media_type="text/csv")
        assert other.uri != first.uri

    async def test_the_ref_names_hash_size_kind_and_media_type(
        self, artifacts: ArtifactStore
    ) -> None:
        body = b"id,total\n1,9.50\n"
        ref = await artifacts.put(body, kind="table", media_type="text/csv")
        assert ref.sha256 == hashlib.sha256(body).hexdigest()
        assert ref.size_bytes == len(body)
        assert (ref.kind, ref.media_type) == ("table", "text/csv")
        assert ref.uri.endswith(f"/sha256/{ref.sha256[:2]}/{ref.sha256}")
        assert await artifacts.holds(ref)
        assert await artifacts.get(ref) == body
        assert b"".join([c async for c in artifacts.read(ref)]) == body

    async def test_empty_bytes_are_an_artifact(self, artifacts: ArtifactStore) -> None:
        ref = await artifacts.put(b"", kind="marker")
        assert (ref.size_bytes, ref.sha256) == (0, hashlib.sha256(b"").hexdigest())
        assert await artifacts.get(ref) == b""

    # --- immutability and concurrency --------------------------------------------------------
    @pytest.mark.parametrize("size", [64 * 1024, 2 * 1024 * 1024], ids=["64KiB", "2MiB"])
    async def test_concurrent_puts_of_the_same_bytes_store_one_object(
        self, artifacts: ArtifactStore, at_rest: AtRest, size: int
    ) -> None:
        body = os.urandom(size)
        refs = await asyncio.gather(
            *[artifacts.put(body, kind="blob") for _ in range(CONCURRENT_PUTS)])
        assert len({ref.model_dump_json() for ref in refs}) == 1
        assert at_rest.names() == [_name(refs[0])]
        assert await artifacts.get(refs[0]) == body

    async def test_concurrent_streamed_puts_of_the_same_bytes_store_one_object(
        self, artifacts: ArtifactStore, at_rest: AtRest
    ) -> None:
        # Larger than one chunk, so each put goes through a temporary object and publishes it.
        body = os.urandom(6 * 1024 * 1024)
        refs = await asyncio.gather(
            *[artifacts.put(chunks_of(body, 1024 * 1024), kind="blob") for _ in range(5)])
        assert len({ref.model_dump_json() for ref in refs}) == 1
        assert at_rest.names() == [_name(refs[0])], "one object, no temporaries left"
        assert await artifacts.get(refs[0]) == body

    @pytest.mark.parametrize("size", [4096, 2 * 1024 * 1024], ids=["4KiB", "2MiB"])
    async def test_a_put_of_existing_bytes_never_overwrites(
        self, artifacts: ArtifactStore, at_rest: AtRest, size: int
    ) -> None:
        body = os.urandom(size)
        ref = await artifacts.put(body, kind="blob")
        at_rest.flip_byte(ref, 100)
        # The store finds the object there (same size) and writes nothing: it stays damaged,
        # which shows the second put did not replace it.
        assert await artifacts.put(body, kind="blob") == ref
        with pytest.raises(ArtifactCorrupt):
            await artifacts.get(ref)

    async def test_a_stream_that_breaks_midway_leaves_nothing_behind(
        self, artifacts: ArtifactStore, at_rest: AtRest
    ) -> None:
        async def broken() -> AsyncIterator[bytes]:
            yield os.urandom(3 * 1024 * 1024)
            raise ConnectionResetError("the source went away")

        with pytest.raises(ConnectionResetError):
            await artifacts.put(broken(), kind="blob")
        assert at_rest.names() == [], "no object and no temporary"

    # --- verification -----------------------------------------------------------------------
    async def test_a_flipped_byte_at_rest_is_artifact_corrupt(
        self, artifacts: ArtifactStore, at_rest: AtRest
    ) -> None:
        body = os.urandom(10_000)
        ref = await artifacts.put(body, kind="blob")
        at_rest.flip_byte(ref, 9_999)
        with pytest.raises(ArtifactCorrupt) as caught:
            await artifacts.get(ref)
        assert caught.value.code == "ARTIFACT_CORRUPT"
        assert caught.value.details["expectedSha256"] == ref.sha256

    async def test_a_missing_object_is_artifact_not_found(
        self, artifacts: ArtifactStore, at_rest: AtRest
    ) -> None:
        ref = await artifacts.put(b"soon gone", kind="blob")
        at_rest.remove(ref)
        assert not await artifacts.holds(ref)
        with pytest.raises(ArtifactNotFound) as caught:
            await artifacts.get(ref)
        assert caught.value.code == "ARTIFACT_NOT_FOUND"

    async def test_a_made_up_ref_is_not_held(self, artifacts: ArtifactStore) -> None:
        real = await artifacts.put(b"real", kind="blob")
        digest = hashlib.sha256(b"never stored").hexdigest()
        made_up = [
            ArtifactRef(uri=real.uri.replace(real.sha256 or "", digest), kind="blob",
                        sha256=digest, size_bytes=12),
            ArtifactRef(uri="s3://elsewhere/x", kind="blob", sha256=real.sha256, size_bytes=4),
            real.model_copy(update={"size_bytes": 5}),
            real.model_copy(update={"sha256": None}),
        ]
        for ref in made_up:
            assert not await artifacts.holds(ref), ref
        with pytest.raises(ArtifactNotFound):
            await artifacts.get(made_up[0])

    async def test_a_ref_of_another_store_is_not_held(
        self, artifacts: ArtifactStore, other_artifacts: ArtifactStore
    ) -> None:
        body = os.urandom(256)
        mine = await artifacts.put(body, kind="blob")
        theirs = await other_artifacts.put(body, kind="blob")
        assert theirs.sha256 == mine.sha256
        if theirs.uri == mine.uri:
            pytest.fail("two stores at different roots gave the same URI")
        assert not await artifacts.holds(theirs)
        assert not await other_artifacts.holds(mine)
        with pytest.raises(ArtifactNotFound):
            await artifacts.get(theirs)

    # --- large objects ----------------------------------------------------------------------
    async def test_a_large_streamed_put_and_read_stay_within_bounded_memory(
        self, artifacts: ArtifactStore
    ) -> None:
        digest = await expected_digest(LARGE_BYTES)
        # Warm up first: a client loads its service model and opens connections once, which
        # is not memory the object takes.
        warm = await artifacts.put(generated(3 * 1024 * 1024), kind="dump")
        assert len(await artifacts.get(warm)) == 3 * 1024 * 1024
        tracemalloc.start()
        try:
            ref = await artifacts.put(generated(LARGE_BYTES), kind="dump")
            _, put_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            hasher = hashlib.sha256()
            async for chunk in artifacts.read(ref):
                hasher.update(chunk)
            _, read_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (ref.sha256, ref.size_bytes) == (digest, LARGE_BYTES)
        assert hasher.hexdigest() == digest
        if self.bounded_memory:
            assert put_peak < MEMORY_BOUND_BYTES, f"put peaked at {put_peak} bytes"
            assert read_peak < MEMORY_BOUND_BYTES, f"read peaked at {read_peak} bytes"


def _name(ref: ArtifactRef) -> str:
    """The stored name of ``ref`` relative to its store's root: ``sha256/<aa>/<hex>``."""
    assert ref.sha256 is not None
    return f"sha256/{ref.sha256[:2]}/{ref.sha256}"
