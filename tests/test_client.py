"""The host API end to end on the reference engine and the memory store (no server needed)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from dvt_engine import (
    Actor,
    Client,
    DvtError,
    Event,
    HandlerRegistry,
    MemoryStoreSettings,
    PausePayload,
    PlanBuilder,
    ReferenceSettings,
    RetryStepPayload,
    RunError,
    RunStatus,
    SignalError,
    SignalRequest,
    SignalType,
    StepContext,
    raise_for_rejection,
)
from dvt_engine.models.run import StepStatus, StepSubstatus
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.waiting import wait_for_snapshot

PLANS = Path(__file__).resolve().parent.parent / "golden_fixtures" / "plans"


def registry_with_dbt(calls: list[dict[str, Any]]) -> HandlerRegistry:
    registry = HandlerRegistry()

    @registry.handler("dbt.run")
    async def dbt_run(ctx: StepContext) -> dict[str, Any]:
        calls.append(dict(ctx.params))
        return {"selected": ctx.params["select"]}

    return registry


def gated_plan() -> dict[str, Any]:
    return (PlanBuilder("gated", "1")
            .step("build", "noop")
            .approval("signoff", depends_on=["build"])
            .step("publish", "echo", depends_on=["signoff"], params={"to": "prod"})
            .build())


async def client(**kw: Any) -> Client:
    options: dict[str, Any] = {"tenant": f"t-{uuid.uuid4().hex[:8]}"}
    options.update(kw)
    return await Client.connect(**options)


async def test_a_registered_handler_runs_and_result_returns_the_terminal_snapshot() -> None:
    calls: list[dict[str, Any]] = []
    plan = PlanBuilder("marts", "1").step("orders", "dbt.run", params={"select": "orders"})
    async with await client(registry=registry_with_dbt(calls),
                            store=MemoryStoreSettings(), engine=ReferenceSettings()) as c:
        handle = await c.start_run(plan.build(), run_id="r-1")
        assert handle.run_id == "r-1"
        snapshot = await handle.result(timeout=30)
        assert snapshot.status == RunStatus.COMPLETED
        assert snapshot.step("orders").output == {"selected": "orders"}
        assert calls == [{"select": "orders"}]
        again = await c.get_run("r-1").snapshot()
        assert again == snapshot


async def test_events_without_follow_and_with_follow_end_at_the_terminal_event() -> None:
    async with await client() as c:
        handle = await c.start_run(PLANS / "diamond.json", run_id="d-1")
        followed: list[Event] = [e async for e in handle.events(follow=True)]
        assert followed[-1].event_type == "RunCompleted"
        listed = [e async for e in handle.events(follow=False)]
        assert [e.run_seq for e in listed] == list(range(1, len(listed) + 1))
        assert [e.event_id for e in followed] == [e.event_id for e in listed[: len(followed)]]
        tail = [e async for e in handle.events(follow=False, after_seq=len(listed) - 1)]
        assert [e.run_seq for e in tail] == [len(listed)]


async def test_plan_inputs_path_bytes_and_planref_give_the_same_plan() -> None:
    async with await client() as c:
        path = PLANS / "one-step.json"
        by_path = await c.store_plan(path)
        by_bytes = await c.store_plan(path.read_bytes())
        assert by_path == by_bytes
        assert await c.store_plan(by_path) is by_path
        handle = await c.start_run(by_path, run_id="p-1")
        assert (await handle.result(timeout=30)).status == RunStatus.COMPLETED


async def test_approve_and_reject_are_typed_signals_with_roles() -> None:
    async with await client(roles=["approver"]) as c:
        handle = await c.start_run(gated_plan(), run_id="g-1")
        await wait_for_snapshot(
            c.store, c.tenant, "g-1",
            lambda s: s.step("signoff").substatus == StepSubstatus.AWAITING_APPROVAL, timeout=30)
        refused = await handle.approve("signoff", actor=Actor(id="nobody"))
        assert not refused.accepted
        assert refused.error_code == "SIGNAL_UNAUTHORIZED"
        with pytest.raises(SignalError):
            raise_for_rejection(refused)
        decision = await handle.approve("signoff", comment="ok")
        assert decision.accepted
        assert decision.type == SignalType.APPROVE_STEP
        assert (await handle.result(timeout=30)).status == RunStatus.COMPLETED

        other = await c.start_run(gated_plan(), run_id="g-2")
        await wait_for_snapshot(
            c.store, c.tenant, "g-2",
            lambda s: s.step("signoff").substatus == StepSubstatus.AWAITING_APPROVAL, timeout=30)
        assert (await other.reject("signoff", comment="no")).accepted
        final = await other.result(timeout=30)
        assert final.status == RunStatus.FAILED


async def test_pause_resume_cancel_and_skip() -> None:
    async with await client(roles=["admin"]) as c:
        handle = await c.start_run(PLANS / "cancel-mid-run.json", run_id="c-1")
        await wait_for_snapshot(c.store, c.tenant, "c-1",
                                lambda s: s.step("long").status == StepStatus.RUNNING,
                                timeout=30)
        paused = await handle.pause("maintenance")
        assert paused.accepted
        assert paused.type == SignalType.PAUSE
        await wait_for_snapshot(c.store, c.tenant, "c-1",
                                lambda s: s.status == RunStatus.PAUSED, timeout=30)
        assert (await handle.resume()).accepted
        skip = await handle.skip_step("after", reason="not needed")
        assert skip.accepted, skip
        assert (await handle.cancel("stop")).accepted
        assert (await handle.result(timeout=30)).status == RunStatus.CANCELLED
        late = await handle.retry_step("long")
        assert not late.accepted
        assert late.error_code == "RUN_TERMINAL"


async def test_unknown_run_is_run_not_found_on_first_use() -> None:
    async with await client() as c:
        handle = c.get_run("nope")
        with pytest.raises(RunError) as err:
            await handle.snapshot()
        assert err.value.code == "RUN_NOT_FOUND"


async def test_list_runs_pages_by_limit() -> None:
    async with await client() as c:
        for n in range(3):
            await (await c.start_run(PLANS / "one-step.json", run_id=f"l-{n}")).result(
                timeout=30)
        page = await c.list_runs(limit=2)
        assert len(page.items) == 2
        assert page.has_more
        everything = await c.list_runs(status=["COMPLETED"])
        assert {r.run_id for r in everything.items} == {"l-0", "l-1", "l-2"}
        assert not everything.has_more


async def test_labels_stay_with_the_run_and_filter_list_runs() -> None:
    async with await client() as c:
        first = await c.start_run(PLANS / "one-step.json", run_id="lab-1",
                                  labels={"trigger": "cron", "team": "data"})
        await first.result(timeout=30)
        second = await c.start_run(PLANS / "one-step.json", run_id="lab-2",
                                   labels={"team": "web"})
        await second.result(timeout=30)
        header = await c.store.get_run(c.tenant, "lab-1")
        assert header is not None
        assert header.labels == {"team": "data", "trigger": "cron"}
        page = await c.list_runs(labels={"team": "data"})
        assert [r.run_id for r in page.items] == ["lab-1"]
        assert page.items[0].labels == {"team": "data", "trigger": "cron"}
        both = await c.list_runs(plan_id=header.plan_id, created_after=header.created_at)
        assert [r.run_id for r in both.items] == ["lab-2", "lab-1"]
        assert (await c.list_runs(created_before=header.created_at)).items == ()
        assert (await c.list_runs(plan_id="another-plan")).items == ()
        with pytest.raises(DvtError) as refused:
            await c.list_runs(labels={"Team": "data"})
        assert refused.value.code == "LABELS_INVALID"
        with pytest.raises(DvtError) as naive:
            await c.list_runs(created_after=header.created_at.replace(tzinfo=None))
        assert naive.value.code == "USAGE_ERROR"


async def test_bad_labels_are_refused_before_anything_is_stored() -> None:
    async with await client() as c:
        for labels in ({"api_key": "x"}, {"k": "v" * 201}, {f"k{i}": "v" for i in range(21)},
                       {"k": 1}):
            with pytest.raises(DvtError) as refused:
                await c.start_run(PLANS / "one-step.json", run_id="bad",
                                  labels=labels)  # type: ignore[dict-item]
            assert refused.value.code == "LABELS_INVALID"
        assert (await c.list_runs()).items == ()


async def test_the_client_closes_what_it_opened_only(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[int] = []

    async def record_close(self: MemoryRunStateStore) -> None:
        closed.append(id(self))

    monkeypatch.setattr(MemoryRunStateStore, "close", record_close)
    async with await client() as c:
        opened = c.store
    assert closed == [id(opened)]
    mine = MemoryRunStateStore()
    async with await client(store=mine) as c:
        assert c.store is mine
    assert closed == [id(opened)]


def test_signal_request_accepts_a_typed_payload() -> None:
    actor = Actor(id="ops")
    typed = SignalRequest.of(RetryStepPayload(step_id="load", reason="flaky"),
                             signal_id="s-1", tenant_id="t", run_id="r", actor=actor)
    assert typed.type == SignalType.RETRY_STEP
    assert typed.payload == {"stepId": "load", "reason": "flaky"}
    loose = SignalRequest.model_validate({"signal_id": "s", "tenant_id": "t", "run_id": "r",
                                          "actor": actor, "payload": PausePayload()})
    assert loose.type == SignalType.PAUSE
    assert loose.payload == {}
    with pytest.raises(DvtError) as err:
        SignalRequest.model_validate({"signal_id": "s", "tenant_id": "t", "run_id": "r",
                                      "type": "CANCEL", "actor": actor,
                                      "payload": PausePayload()})
    assert err.value.code == "SIGNAL_INVALID_PAYLOAD"


def test_importing_the_package_stays_light() -> None:
    """Temporal's sandbox imports dvt modules: the package must not pull in the client."""
    import subprocess
    import sys

    code = ("import sys, dvt_engine.errors; "
            "heavy = [m for m in ('dvt_engine.client', 'dvt_engine.planning.https', "
            "'http.client') if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"
