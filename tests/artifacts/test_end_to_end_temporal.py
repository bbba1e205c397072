"""Artifacts on Temporal: the worker's step runner puts to S3 and records the store's ref.

The setup of a distributed deployment: PostgreSQL store, Temporal dev server, S3 (S3Proxy).
"""

from __future__ import annotations

import hashlib

import pytest
from artifact_helpers import PUT, REPORT, report_registry

from dvt_engine import Client, HandlerRegistry, PlanBuilder
from dvt_engine.artifacts import ArtifactStore
from dvt_engine.models.snapshot import ArtifactRef

pytestmark = [pytest.mark.parametrize("dvt_store_name", ["postgres"]),
              pytest.mark.parametrize("dvt_engine_name", ["temporal"])]


@pytest.fixture
def dvt_registry() -> HandlerRegistry:
    return report_registry()


@pytest.fixture
def dvt_artifact_store(dvt_s3_artifact_store: ArtifactStore) -> ArtifactStore:
    return dvt_s3_artifact_store


async def test_a_retried_activity_records_an_equal_ref_on_temporal(
    dvt_client: Client, dvt_artifact_store: ArtifactStore,
) -> None:
    plan = (PlanBuilder("reports", "1")
            .step("export", "report.export",
                  retry={"maxAttempts": 2, "initialIntervalMs": 100})
            .build())
    snapshot = await (await dvt_client.start_run(plan)).result(timeout=120)
    assert snapshot.status == "COMPLETED"
    assert len(PUT) == 2
    assert PUT[0] == PUT[1]
    (ref,) = snapshot.step("export").artifacts
    assert ref == PUT[1]
    assert ref.uri.startswith("s3://")
    assert ref.sha256 == hashlib.sha256(REPORT).hexdigest()
    assert await dvt_artifact_store.get(ArtifactRef.model_validate(ref.model_dump())) == REPORT


async def test_a_made_up_ref_fails_the_step_on_temporal(dvt_client: Client) -> None:
    plan = PlanBuilder("reports", "1").step("forge", "report.forged").build()
    snapshot = await (await dvt_client.start_run(plan)).result(timeout=120)
    assert snapshot.status == "FAILED"
    error = snapshot.step("forge").error
    assert error is not None
    assert error.code == "ARTIFACT_NOT_FOUND"
