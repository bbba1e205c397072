"""Helpers for the Conductor tests: engines with their own task types, fast worker settings."""

from __future__ import annotations

import uuid

from dvt_adapters_conductor.engine import ConductorEngine
from dvt_adapters_conductor.worker import WorkerOptions
from dvt_engine.stores.memory import MemoryRunStateStore

#: Short leases so a killed worker's task comes back within seconds in the fault tests.
TEST_LEASE_S = 6


def fast_worker_options() -> WorkerOptions:
    """Worker settings for tests: quick parking so operator-driven tests do not wait long."""
    return WorkerOptions(park_s=1, operator_park_s=2, drain_timeout_s=30.0)


def make_engine(server_url: str, store: MemoryRunStateStore, **options: object) -> ConductorEngine:
    """An engine with its own task types, so engines of different tests never share tasks."""
    values: dict[str, object] = {
        "server_url": server_url,
        "task_prefix": f"t{uuid.uuid4().hex[:10]}",
        "lease_s": TEST_LEASE_S,
        "worker_options": fast_worker_options(),
    }
    values.update(options)
    return ConductorEngine(store, **values)  # type: ignore[arg-type]
