"""start_run on Conductor: one workflow per run-request key, and a half-done start repaired."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from conductor_helpers import make_engine

from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import ConductorRunRef, RunContext, RunStatus
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.waiting import wait_for_terminal

TENANT = "acme"


async def put_plan(store: MemoryRunStateStore, plan_id: str) -> PlanRef:
    """A small diamond plan in the registry."""
    doc = {"metadata": {"planId": plan_id, "planVersion": "1", "schemaVersion": "v1.2"},
           "steps": [{"stepId": "a", "kind": "noop"},
                     {"stepId": "b", "kind": "noop", "dependsOn": ["a"]},
                     {"stepId": "c", "kind": "noop", "dependsOn": ["a"]},
                     {"stepId": "d", "kind": "noop", "dependsOn": ["b", "c"]}]}
    data = json.dumps(doc).encode()
    uri = await store.put_plan(data)
    return PlanRef(uri=uri, sha256=hashlib.sha256(data).hexdigest(), schema_version="v1.2",
                   plan_id=plan_id, plan_version="1")


def context() -> RunContext:
    """A fresh run with a request id."""
    run_id = f"start-{uuid.uuid4().hex[:8]}"
    return RunContext(tenant_id=TENANT, project_id="p", environment_id="e", run_id=run_id,
                      run_request_id=f"req-{run_id}")


async def test_a_start_that_stopped_after_registration_is_completed_by_a_repeat(
    conductor_url: str,
) -> None:
    """The run was registered but its workflow never started (a crash in between): repeating
    the request starts it, exactly once."""
    store = MemoryRunStateStore()
    engine = make_engine(conductor_url, store)
    try:
        ref = await put_plan(store, "half-start")
        ctx = context()
        await engine.coordinator()
        header, _plan, created = await engine.register(ref, ctx)
        assert created
        assert (await store.get_snapshot(TENANT, ctx.run_id)).status == RunStatus.PENDING  # type: ignore[union-attr]
        first = await engine.start_run(ref, ctx)
        again = await engine.start_run(ref, ctx)
        assert isinstance(first, ConductorRunRef)
        assert first.workflow_id
        assert again == first
        snap = await wait_for_terminal(store, TENANT, ctx.run_id, timeout=60)
    finally:
        await engine.close()
    assert snap.status == RunStatus.COMPLETED
    events = await store.fetch_events(TENANT, header.run_id)
    assert [e.event_type for e in events].count("RunStarted") == 1


async def test_a_changed_plan_gets_a_new_definition_version_and_old_runs_keep_theirs(
    conductor_url: str,
) -> None:
    """Two different plans with one planId: two versions of one workflow definition."""
    store = MemoryRunStateStore()
    engine = make_engine(conductor_url, store)
    plan_id = f"versions-{uuid.uuid4().hex[:6]}"
    try:
        coordinator = await engine.coordinator()
        api = coordinator.api
        ref1 = await put_plan(store, plan_id)
        doc2 = {"metadata": {"planId": plan_id, "planVersion": "2", "schemaVersion": "v1.2"},
                "steps": [{"stepId": "only", "kind": "noop"}]}
        data2 = json.dumps(doc2).encode()
        ref2 = PlanRef(uri=await store.put_plan(data2), sha256=hashlib.sha256(data2).hexdigest(),
                       schema_version="v1.2", plan_id=plan_id, plan_version="2")
        run1 = await engine.start_run(ref1, ctx1 := context())
        run2 = await engine.start_run(ref2, ctx2 := context())
        run3 = await engine.start_run(ref1, ctx3 := context())
        for c in (ctx1, ctx2, ctx3):
            assert (await wait_for_terminal(store, TENANT, c.run_id, timeout=60)).status == \
                RunStatus.COMPLETED
        versions = []
        for run in (run1, run2, run3):
            assert isinstance(run, ConductorRunRef)
            workflow = await api.run(api.get_workflow, run.workflow_id, False)
            versions.append(workflow["workflowVersion"])
    finally:
        await engine.close()
    assert versions[0] == versions[2]
    assert versions[1] == versions[0] + 1


async def test_typed_settings_reach_the_engine_and_no_url_is_not_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No server is needed: settings are checked at construction, the URL at connection."""
    from dvt_adapters_conductor.engine import ConductorEngine
    from dvt_engine import ConductorSettings, EngineError, open_engine

    monkeypatch.delenv("DVT_CONDUCTOR_URL", raising=False)
    settings = ConductorSettings(url="http://127.0.0.1:1/api", task_prefix="tp", worker=False)
    engine = open_engine(settings, store=MemoryRunStateStore())
    assert isinstance(engine, ConductorEngine)
    assert engine.settings is settings
    assert engine.mapping.task_prefix == "tp"
    legacy = ConductorEngine(MemoryRunStateStore(), server_url="http://h/api", lease_s=5)
    assert legacy.settings.url == "http://h/api"
    assert legacy.mapping.lease_s == 5
    unset = ConductorEngine(MemoryRunStateStore())
    with pytest.raises(EngineError) as err:
        await unset.coordinator()
    assert err.value.code == "ENGINE_NOT_CONFIGURED"
