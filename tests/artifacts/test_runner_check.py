"""The step runner records only artifacts the store holds (fast: memory store, memory twin)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from step_runner_helpers import invocation, make_plan, registry_with, started_run, step_events

from dvt_engine.artifacts import ArtifactStore
from dvt_engine.models.events import Event
from dvt_engine.models.snapshot import ArtifactRef
from dvt_engine.ports import StepContext, StepResult
from dvt_engine.steps import StepOutcome, StepRunner
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore


@pytest.fixture
def store() -> MemoryRunStateStore:
    return MemoryRunStateStore()


async def _run(store: MemoryRunStateStore, handler: Any,
               artifacts: ArtifactStore | None) -> tuple[StepOutcome, list[Event]]:
    plan = make_plan([{"stepId": "s", "kind": "make", "retry": {"maxAttempts": 3}}])
    header = await started_run(store, plan)
    runner = StepRunner(store, registry_with(make=handler), artifacts=artifacts)
    outcome = await runner.run(invocation(header, plan, "s"))
    return outcome, await step_events(store, header)


async def test_a_made_up_ref_fails_the_attempt_with_artifact_not_found(
    store: MemoryRunStateStore,
) -> None:
    digest = hashlib.sha256(b"never stored").hexdigest()
    artifacts = MemoryArtifactStore()

    async def make(ctx: StepContext) -> StepResult:
        return StepResult(artifacts=[ArtifactRef(uri=artifacts.uri_for(digest), kind="csv",
                                                 sha256=digest, size_bytes=12)])

    outcome, events = await _run(store, make, artifacts)
    # Not retryable: the same handler would make the same ref up again.
    assert (outcome.status, outcome.final) == ("failed", True)
    assert outcome.error is not None
    assert outcome.error.code == "ARTIFACT_NOT_FOUND"
    assert [e.event_type for e in events] == ["StepStarted", "StepFailed"]
    assert events[-1].payload["error"]["code"] == "ARTIFACT_NOT_FOUND"


async def test_a_ref_of_another_store_is_refused(store: MemoryRunStateStore) -> None:
    elsewhere = MemoryArtifactStore("memory://elsewhere")

    async def make(ctx: StepContext) -> StepResult:
        await ctx.artifacts.put(b"same bytes", kind="csv")
        return StepResult(artifacts=[await elsewhere.put(b"same bytes", kind="csv")])

    outcome, _ = await _run(store, make, MemoryArtifactStore())
    assert outcome.error is not None
    assert outcome.error.code == "ARTIFACT_NOT_FOUND"


async def test_the_stores_ref_is_recorded(store: MemoryRunStateStore) -> None:
    artifacts = MemoryArtifactStore()

    async def make(ctx: StepContext) -> StepResult:
        return StepResult(artifacts=[await ctx.artifacts.put(b"x,y\n", kind="csv")])

    outcome, events = await _run(store, make, artifacts)
    assert outcome.status == "succeeded"
    (recorded,) = events[-1].payload["artifacts"]
    assert await artifacts.holds(ArtifactRef.model_validate(recorded))
    assert recorded["sha256"] == hashlib.sha256(b"x,y\n").hexdigest()


async def test_without_an_artifact_store_returned_artifacts_are_refused(
    store: MemoryRunStateStore,
) -> None:
    async def make(ctx: StepContext) -> StepResult:
        return StepResult(artifacts=[{"uri": "s3://bucket/key", "kind": "csv"}])

    outcome, _ = await _run(store, make, None)
    assert outcome.error is not None
    assert outcome.error.code == "ARTIFACT_STORE_NOT_CONFIGURED"


async def test_without_an_artifact_store_ctx_artifacts_is_a_coded_failure(
    store: MemoryRunStateStore,
) -> None:
    async def make(ctx: StepContext) -> StepResult:
        await ctx.artifacts.put(b"x", kind="csv")
        return StepResult()

    outcome, _ = await _run(store, make, None)
    assert outcome.error is not None
    assert outcome.error.code == "ARTIFACT_STORE_NOT_CONFIGURED"
