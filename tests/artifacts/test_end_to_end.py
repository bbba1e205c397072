"""Artifacts through a whole run: the reference engine, a real store, a real artifact store.

A handler puts bytes with ``ctx.artifacts``; StepCompleted records the store's ref; an engine
retry that produces the same bytes records an equal ref over one stored object; a handler that
returns a ref it made up fails the step with ARTIFACT_NOT_FOUND. Run on the memory store and on
PostgreSQL, with the local artifact store and with S3 (S3Proxy).
"""

from __future__ import annotations

import hashlib

import pytest
from artifact_helpers import PUT, REPORT, report_registry

from dvt_engine import Client, HandlerRegistry, PlanBuilder
from dvt_engine.artifacts import ArtifactStore
from dvt_engine.models.snapshot import ArtifactRef

pytestmark = pytest.mark.parametrize("dvt_store_name", ["memory", "postgres"])


@pytest.fixture(params=["local", "s3"])
def dvt_artifact_store(request: pytest.FixtureRequest) -> ArtifactStore:
    """The client's artifact store: a local directory, or a prefix on the S3Proxy server."""
    store: ArtifactStore = request.getfixturevalue(f"dvt_{request.param}_artifact_store")
    return store


@pytest.fixture
def dvt_registry() -> HandlerRegistry:
    return report_registry()


async def test_a_retried_attempt_records_an_equal_ref_of_one_stored_object(
    dvt_client: Client, dvt_artifact_store: ArtifactStore,
) -> None:
    plan = (PlanBuilder("reports", "1")
            .step("export", "report.export",
                  retry={"maxAttempts": 2, "initialIntervalMs": 10})
            .build())
    handle = await dvt_client.start_run(plan)
    snapshot = await handle.result(timeout=60)
    assert snapshot.status == "COMPLETED"
    assert len(PUT) == 2
    assert PUT[0] == PUT[1]
    completed = [e async for e in handle.events(follow=False)
                 if e.event_type == "StepCompleted"]
    (recorded,) = completed[0].payload["artifacts"]
    ref = ArtifactRef.model_validate(recorded)
    assert ref == PUT[1]
    assert (ref.sha256, ref.size_bytes) == (hashlib.sha256(REPORT).hexdigest(), len(REPORT))
    assert snapshot.step("export").artifacts == (ref,)
    assert await dvt_artifact_store.holds(ref)
    assert await dvt_artifact_store.get(ref) == REPORT


async def test_a_made_up_ref_fails_the_step_with_artifact_not_found(
    dvt_client: Client,
) -> None:
    plan = PlanBuilder("reports", "1").step("forge", "report.forged").build()
    snapshot = await (await dvt_client.start_run(plan)).result(timeout=60)
    assert snapshot.status == "FAILED"
    step = snapshot.step("forge")
    assert step.error is not None
    assert step.error.code == "ARTIFACT_NOT_FOUND"
    assert step.artifacts == ()
