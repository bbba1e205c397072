"""`dvt parity ... conductor` while a `dvt worker` of another store serves the default task types
on the same server: the parity run has its own task namespace, so the worker never takes (and
parks) its tasks."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import invoke

from dvt_adapters_conductor.engine import ConductorEngine
from dvt_adapters_conductor.worker import WorkerHost
from dvt_engine.stores.memory import MemoryRunStateStore


class WorkerThread:
    """A worker host on the default task prefix over its own store, in a thread of its own."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.ready = threading.Event()
        self.hosts: list[WorkerHost] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        engine = ConductorEngine(MemoryRunStateStore(), server_url=self.server_url, worker=False)
        try:
            await engine.coordinator()
            host = await engine.worker_host().start()
            self.hosts.append(host)
            self.ready.set()
            await self._stop.wait()
            await host.stop(drain_timeout_s=5)
        finally:
            self.ready.set()
            await engine.close()

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        assert self.ready.wait(timeout=120), "the worker host did not start"
        assert self.hosts, "the worker host failed to start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)


@pytest.fixture
def default_prefix_worker(conductor_url: str) -> Iterator[WorkerThread]:
    """What `dvt worker --engine conductor` runs: the default prefix, another store."""
    with WorkerThread(conductor_url) as worker:
        yield worker


def test_parity_on_conductor_is_not_disturbed_by_a_running_worker(
    capsys: pytest.CaptureFixture[str], conductor_url: str, default_prefix_worker: WorkerThread,
    tmp_path: Path,
) -> None:
    """The parity run completes equal, and the other store's worker handled none of its tasks."""
    # Eight tasks at once: on a shared task type the other worker's pollers would win some.
    plan = tmp_path / "wide.json"
    plan.write_text(json.dumps({
        "metadata": {"planId": "parity-wide", "planVersion": "1", "schemaVersion": "v1.2"},
        "steps": [{"stepId": f"s{i}", "kind": "echo", "params": {"i": i}} for i in range(8)],
    }))
    result = invoke(capsys, ["parity", str(plan), "--engines",
                             "reference,conductor", "--json"],
                    {"DVT_CONDUCTOR_URL": conductor_url})
    assert result.code == 0, result
    doc = result.json()
    assert doc["equal"] is True, doc["differences"]
    assert set(doc["checksums"]) == {"reference", "conductor"}
    assert default_prefix_worker.hosts[0].handled == 0
