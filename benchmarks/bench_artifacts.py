"""Artifact store throughput: dvt's local and S3 stores next to bare fsspec doing the same I/O.

For each backend (a local directory; S3 on an S3Proxy server started through dvt_local), the
benchmark writes and reads back:

- small objects: ``--small-count`` distinct 4 KiB objects, 8 at a time;
- large objects: ``--large-count`` distinct ``--large-mib`` MiB objects, one at a time, streamed
  in 1 MiB chunks (dvt: ``put`` of an async stream and ``read``; bare: ``fs.open`` and
  ``write``/``read`` of the same chunks).

The bare baseline is the same fsspec filesystem doing plain writes and reads (``pipe_file`` /
``cat_file`` for small objects, a file object for large ones) with the same concurrency, in
worker threads as dvt does: what remains is dvt's cost (hashing, the existence check, the
temporary object and its publication, verification on read). Fresh random bytes for every
object, so no put finds its object already stored. Each measurement is repeated ``--rounds``
times (dvt and bare alternate going first) and the median round is reported.

Run: ``python benchmarks/bench_artifacts.py`` (``--quick`` for a smoke run, ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import s3fs
from fsspec.implementations.local import LocalFileSystem

from dvt_engine.artifacts import ArtifactStore
from dvt_engine.plugins import open_artifact_store
from dvt_local.s3 import S3Server

SMALL_BYTES = 4 * 1024
CHUNK = 1024 * 1024
CONCURRENCY = 8
BUCKET = "dvt-bench"


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start:start + CHUNK]


async def _bounded(jobs: list[Callable[[], Awaitable[Any]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


async def _timed(jobs: list[Callable[[], Awaitable[Any]]], limit: int) -> float:
    began = time.perf_counter()
    await _bounded(jobs, limit)
    return time.perf_counter() - began


def _row(backend: str, size: str, subject: str, op: str, count: int, nbytes: int,
         seconds: float) -> dict[str, Any]:
    return {"backend": backend, "objects": size, "subject": subject, "op": op, "count": count,
            "seconds": round(seconds, 3), "objectsPerS": round(count / seconds, 1),
            "mbPerS": round(nbytes / seconds / 1e6, 1)}


async def _dvt(backend: str, store: ArtifactStore, small: list[bytes],
               large: list[bytes]) -> list[dict[str, Any]]:
    rows = []
    refs = []

    async def put_small(body: bytes) -> None:
        refs.append(await store.put(body, kind="bench"))

    seconds = await _timed([lambda b=b: put_small(b) for b in small], CONCURRENCY)
    rows.append(_row(backend, "small", "dvt", "put", len(small), len(small) * SMALL_BYTES,
                     seconds))
    seconds = await _timed([lambda r=r: store.get(r) for r in refs], CONCURRENCY)
    rows.append(_row(backend, "small", "dvt", "get", len(small), len(small) * SMALL_BYTES,
                     seconds))
    large_refs = []

    async def put_large(body: bytes) -> None:
        large_refs.append(await store.put(_stream(body), kind="bench"))

    async def read_large(ref: Any) -> None:
        async for _ in store.read(ref):
            pass

    total = sum(map(len, large))
    seconds = await _timed([lambda b=b: put_large(b) for b in large], 1)
    rows.append(_row(backend, "large", "dvt", "put (stream)", len(large), total, seconds))
    seconds = await _timed([lambda r=r: read_large(r) for r in large_refs], 1)
    rows.append(_row(backend, "large", "dvt", "read (verified)", len(large), total, seconds))
    return rows


async def _bare(backend: str, fs: Any, root: str, small: list[bytes],
                large: list[bytes]) -> list[dict[str, Any]]:
    rows = []
    names = [f"{root}/bare/{uuid.uuid4().hex}" for _ in small]
    if backend == "local":
        fs.makedirs(f"{root}/bare", exist_ok=True)
    seconds = await _timed([lambda n=n, b=b: asyncio.to_thread(fs.pipe_file, n, b)
                            for n, b in zip(names, small, strict=True)], CONCURRENCY)
    rows.append(_row(backend, "small", "bare fsspec", "put", len(small),
                     len(small) * SMALL_BYTES, seconds))
    seconds = await _timed([lambda n=n: asyncio.to_thread(fs.cat_file, n) for n in names],
                           CONCURRENCY)
    rows.append(_row(backend, "small", "bare fsspec", "get", len(small),
                     len(small) * SMALL_BYTES, seconds))
    large_names = [f"{root}/bare/{uuid.uuid4().hex}" for _ in large]

    async def write(name: str, body: bytes) -> None:
        file = await asyncio.to_thread(fs.open, name, "wb")
        async for chunk in _stream(body):
            await asyncio.to_thread(file.write, chunk)
        await asyncio.to_thread(file.close)

    async def read(name: str) -> None:
        file = await asyncio.to_thread(fs.open, name, "rb")
        while await asyncio.to_thread(file.read, CHUNK):
            pass
        await asyncio.to_thread(file.close)

    total = sum(map(len, large))
    seconds = await _timed([lambda n=n, b=b: write(n, b)
                            for n, b in zip(large_names, large, strict=True)], 1)
    rows.append(_row(backend, "large", "bare fsspec", "put (stream)", len(large), total, seconds))
    seconds = await _timed([lambda n=n: read(n) for n in large_names], 1)
    rows.append(_row(backend, "large", "bare fsspec", "read", len(large), total, seconds))
    return rows


def _data(count: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


async def _rounds(backend: str, rounds: int, dvt: Callable[[], Awaitable[list[Any]]],
                  bare: Callable[[], Awaitable[list[Any]]]) -> list[dict[str, Any]]:
    """Both subjects ``rounds`` times, alternating which goes first (the machine's page cache
    and background writeback favour neither); the median round of each measurement."""
    rows: list[dict[str, Any]] = []
    for index in range(rounds):
        first, second = (dvt, bare) if index % 2 == 0 else (bare, dvt)
        rows += await first()
        rows += await second()
    return _medians(rows)


def _medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["backend"], row["objects"], row["subject"], row["op"])
        groups.setdefault(key, []).append(row)
    out = []
    for key in sorted(groups, key=lambda k: (k[0] != "local", k[1] != "small", k[3], k[2])):
        ordered = sorted(groups[key], key=lambda r: r["seconds"])
        out.append({**ordered[len(ordered) // 2], "rounds": len(ordered)})
    return out


async def run(small_count: int, large_count: int, large_mib: int,
              rounds: int) -> list[dict[str, Any]]:
    """Every measurement, local first, then S3 on a fresh S3Proxy server."""
    rows: list[dict[str, Any]] = []
    size = large_mib * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="dvt-bench-artifacts-") as tmp:
        base = Path(tmp)
        local = await open_artifact_store((base / "dvt").as_uri())
        fs_local = LocalFileSystem()
        rows += await _rounds(
            "local", rounds,
            lambda: _dvt("local", local, _data(small_count, SMALL_BYTES),
                         _data(large_count, size)),
            lambda: _bare("local", fs_local, str(base / "fsspec"),
                          _data(small_count, SMALL_BYTES), _data(large_count, size)))
        with S3Server(data_dir=base / "s3") as server:
            options = server.client_options()
            fs = s3fs.S3FileSystem(key=options["access_key_id"],
                                   secret=options["secret_access_key"],
                                   endpoint_url=options["endpoint_url"],
                                   skip_instance_cache=True, default_block_size=5 * CHUNK,
                                   fixed_upload_size=True)
            fs.call_s3("create_bucket", Bucket=BUCKET)
            store = await open_artifact_store(f"s3://{BUCKET}/dvt", **options)
            # Warm both clients (service model, connections) before timing.
            await store.get(await store.put(b"warm", kind="bench"))
            fs.pipe_file(f"{BUCKET}/warm", b"warm")
            fs.cat_file(f"{BUCKET}/warm")
            rows += await _rounds(
                "s3", rounds,
                lambda: _dvt("s3", store, _data(small_count, SMALL_BYTES),
                             _data(large_count, size)),
                lambda: _bare("s3", fs, f"{BUCKET}/fsspec", _data(small_count, SMALL_BYTES),
                              _data(large_count, size)))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = ["| backend | objects | subject | op | count | s | objects/s | MB/s |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['objects']} | {r['subject']} | {r['op']} | "
                     f"{r['count']} | {r['seconds']} | {r['objectsPerS']:,} | {r['mbPerS']:,} |")
    return "\n".join(lines)


def main() -> None:
    """Parse options, run, print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--small-count", type=int, default=500)
    parser.add_argument("--large-count", type=int, default=3)
    parser.add_argument("--large-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="20 small, 1 large of 8 MiB, 1 round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.small_count, args.large_count, args.large_mib, args.rounds = 20, 1, 8, 1
    rows = asyncio.run(run(args.small_count, args.large_count, args.large_mib, args.rounds))
    print(json.dumps(rows, indent=2) if args.json else table(rows))


if __name__ == "__main__":
    main()
