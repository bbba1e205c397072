"""The README's settings switch for real: the same Client program on PostgreSQL and Temporal."""

from __future__ import annotations

import uuid

from temporalio.testing import WorkflowEnvironment

from dvt_engine import (
    Client,
    HandlerRegistry,
    PlanBuilder,
    PostgresStoreSettings,
    RunStatus,
    StepContext,
    TemporalSettings,
)
from dvt_engine.models.run import StepSubstatus
from dvt_engine.waiting import wait_for_snapshot


async def test_client_on_postgres_and_temporal_runs_and_steers(
    temporal_env: WorkflowEnvironment, dvt_postgres_store_url: str
) -> None:
    registry = HandlerRegistry()

    @registry.handler("dbt.run")
    async def dbt_run(ctx: StepContext) -> dict[str, str]:
        return {"selected": ctx.params["select"]}

    plan = (PlanBuilder("marts", "1")
            .step("orders", "dbt.run", params={"select": "orders"})
            .approval("signoff", depends_on=["orders"])
            .build())
    address = temporal_env.client.service_client.config.target_host
    run_id = f"client-{uuid.uuid4().hex[:8]}"
    async with await Client.connect(
        store=PostgresStoreSettings(url=dvt_postgres_store_url),
        engine=TemporalSettings(address=address, task_queue=f"client-{uuid.uuid4().hex[:8]}"),
        registry=registry, tenant="acme", roles=["operator", "approver"],
    ) as client:
        run = await client.start_run(plan, run_id=run_id)
        await wait_for_snapshot(
            client.store, "acme", run_id,
            lambda s: s.step("signoff").substatus == StepSubstatus.AWAITING_APPROVAL,
            timeout=60)
        decision = await run.approve("signoff", comment="ok")
        assert decision.accepted, decision
        snapshot = await run.result(timeout=60)
        assert snapshot.status == RunStatus.COMPLETED
        assert snapshot.step("orders").output == {"selected": "orders"}
        assert snapshot.engine_run_ref is not None
        assert snapshot.engine_run_ref["provider"] == "temporal"
        # A handle from the id alone finds the run and its engine reference.
        again = client.get_run(run_id)
        assert (await again.snapshot()).last_event_seq == snapshot.last_event_seq
        late = await again.cancel()
        assert late.error_code == "RUN_TERMINAL"
        page = await client.list_runs(status=["COMPLETED"])
        assert run_id in {r.run_id for r in page.items}
