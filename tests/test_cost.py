"""The price model and the usage fold (dvt_engine.cost): a hand-computed golden table, day
boundaries, costHint units independent of timing, canonical rows and coded query errors."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from dvt_engine.cost import PriceTable, UsageWindow, meter_run, rows_bytes, summarize
from dvt_engine.errors import UsageQueryInvalid
from dvt_engine.models.events import Event

MIB = 1048576
_ids = itertools.count(1)


def ev(run: str, etype: str, at: str, step: str | None = None, plan: str = "etl",
       attempt: int = 1, **payload: Any) -> Event:
    """One event of ``run`` emitted at ``at`` (ISO, UTC)."""
    n = next(_ids)
    return Event(event_id=f"e{n}", event_type=etype, tenant_id="t", project_id="p",
                 environment_id="e", run_id=run, step_id=step, plan_id=plan, plan_version="1",
                 logical_attempt_id=attempt,
                 idempotency_key=hashlib.sha256(str(n).encode()).hexdigest(),
                 emitted_at=datetime.fromisoformat(at).replace(tzinfo=UTC),
                 emitted_by="engine", payload=payload)


def golden_runs() -> dict[str, list[Event]]:
    """Four runs whose usage docs/cost.md and the table below compute by hand."""
    d = "2026-11-03T"
    return {
        "r1": [ev("r1", "RunStarted", d + "10:00:00", engine="reference"),
               ev("r1", "StepStarted", d + "10:00:00", "a", kind="noop"),
               ev("r1", "StepCompleted", d + "10:00:02.500", "a",
                  artifacts=[{"uri": "mem://x", "kind": "file", "sizeBytes": 2 * MIB}],
                  cost={"durationMs": 2500}),
               ev("r1", "StepStarted", d + "10:00:03", "b", kind="noop"),
               ev("r1", "StepCompleted", d + "10:00:50", "b", cost={"units": 2}),
               ev("r1", "StepStarted", d + "10:01:00", "c", kind="noop"),
               ev("r1", "StepFailed", d + "10:01:01.250", "c",
                  error={"code": "STEP_FAILED", "message": "x"}),
               ev("r1", "RunFailed", d + "10:01:02", code="STEP_FAILED", message="x")],
        # Crosses midnight: the run unit on the 3rd, the step's 4 s on the 4th.
        "r2": [ev("r2", "RunStarted", d + "23:59:59", engine="reference"),
               ev("r2", "StepStarted", d + "23:59:59", "a", kind="noop"),
               ev("r2", "StepCompleted", "2026-11-04T00:00:03", "a")],
        "r3": [ev("r3", "RunStarted", "2026-11-04T08:00:00", plan="ml", engine="reference"),
               ev("r3", "StepStarted", "2026-11-04T08:00:00", "m", plan="ml", kind="noop"),
               ev("r3", "StepCompleted", "2026-11-04T09:30:00", "m", plan="ml",
                  cost={"units": 0.5, "durationMs": 5400000},
                  artifacts=[{"uri": "mem://y", "kind": "file", "sizeBytes": 3 * MIB}])],
        "r4": [ev("r4", "RunStarted", "2026-12-01T00:00:00", engine="reference")],
    }


def all_rows(prices: PriceTable | None = None) -> list[Any]:
    return [row for events in golden_runs().values()
            for row in meter_run(events, prices or PriceTable())]


NOVEMBER = UsageWindow(date(2026, 11, 1), date(2026, 12, 1), "plan")


def test_golden_usage_by_plan_equals_the_hand_computed_table() -> None:
    # r1: 1 run + 2.5 s + 2 (costHint) + 1.25 s (failed) + 2 MiB x 0.01; r2: 1 + 4 s.
    assert summarize(all_rows(), NOVEMBER) == {
        "from": "2026-11-01", "to": "2026-12-01", "totalUnits": 13.3,
        "items": [
            {"key": "etl", "runs": 2, "computeUnits": 9.75, "dataUnits": 0.02,
             "totalUnits": 11.77},
            {"key": "ml", "runs": 1, "computeUnits": 0.5, "dataUnits": 0.03,
             "totalUnits": 1.53},
        ]}


def test_golden_usage_by_day_and_by_run() -> None:
    by_day = summarize(all_rows(), UsageWindow(NOVEMBER.start, NOVEMBER.end, "day"))
    assert by_day["items"] == [
        {"key": "2026-11-03", "runs": 2, "computeUnits": 5.75, "dataUnits": 0.02,
         "totalUnits": 7.77},
        {"key": "2026-11-04", "runs": 1, "computeUnits": 4.5, "dataUnits": 0.03,
         "totalUnits": 5.53}]
    by_run = summarize(all_rows(), UsageWindow(date(2026, 11, 1), date(2026, 12, 2), "run"))
    assert [(i["key"], i["totalUnits"]) for i in by_run["items"]] == [
        ("r1", 6.77), ("r2", 5), ("r3", 1.53), ("r4", 1)]
    assert by_run["totalUnits"] == 14.3


def test_prices_are_settings() -> None:
    prices = PriceTable(compute_units_per_second=Decimal(2), data_units_per_mib=Decimal(1),
                        units_per_run=Decimal(0))
    only_r1 = summarize(meter_run(golden_runs()["r1"], prices), NOVEMBER)
    # 2 x (2.5 + 1.25) s + 2 (costHint, not priced by time) + 2 MiB x 1.
    assert only_r1["items"][0]["computeUnits"] == 9.5
    assert only_r1["items"][0]["dataUnits"] == 2
    assert only_r1["totalUnits"] == 11.5


def test_cost_hint_units_do_not_depend_on_engine_timing() -> None:
    def run(step_seconds: float, retry_gap: float) -> bytes:
        start = datetime(2026, 11, 5, 12, tzinfo=UTC)
        end = start + timedelta(seconds=step_seconds)
        return rows_bytes(meter_run([
            ev("h", "RunStarted", start.isoformat()[:19], engine="x"),
            ev("h", "StepStarted", start.isoformat()[:19], "s", kind="noop"),
            # An engine retry may record StepStarted again: the first one counts.
            ev("h", "StepStarted", (start + timedelta(seconds=retry_gap)).isoformat()[:19],
               "s", kind="noop"),
            ev("h", "StepCompleted", end.isoformat()[:26], "s",
               cost={"units": 3, "durationMs": int(step_seconds * 1000)})], PriceTable()))
    assert run(0.2, 0) == run(7.9, 3) == run(40, 1)


def test_rows_are_canonical_whatever_order_runs_are_read_in() -> None:
    runs = list(golden_runs().values())
    forward = rows_bytes(r for events in runs for r in meter_run(events, PriceTable()))
    backward = rows_bytes(r for events in reversed(runs) for r in meter_run(events, PriceTable()))
    assert forward == backward
    assert b'"computeUnits":"5.750000"' in forward


@pytest.mark.parametrize(("start", "end", "group_by"), [
    ("2026-13-01", "2026-12-01", None), ("yesterday", None, None),
    ("2026-11-05", "2026-11-05", None),
    ("2026-12-01", "2026-11-01", None), ("2020-01-01", "2026-01-01", None),
    ("2026-11-01", "2026-12-01", "tenant"), ("2026-11-01T00:00:00", "2026-12-01", None),
    ("2026-11-01", "", None), ("", None, None)])
def test_bad_usage_queries_are_coded(start: str, end: str | None, group_by: str | None) -> None:
    with pytest.raises(UsageQueryInvalid) as caught:
        UsageWindow.parse(start, end, group_by)
    assert caught.value.to_dict()["code"] == "USAGE_QUERY_INVALID"


def test_default_window_is_this_month_so_far() -> None:
    window = UsageWindow.parse(None, None, today=date(2026, 11, 17))
    assert (window.start, window.end, window.group_by) == (
        date(2026, 11, 1), date(2026, 11, 18), "plan")


async def test_a_library_client_refuses_starts_once_a_block_budget_is_spent() -> None:
    from dvt_engine.admission import LimitsPatch
    from dvt_engine.builder import PlanBuilder
    from dvt_engine.client import Client
    from dvt_engine.cost import usage_rows
    from dvt_engine.errors import QuotaExceeded
    from dvt_engine.models.run import RunStatus
    from dvt_engine.stores.memory import MemoryRunStateStore
    from dvt_engine.stores.memory_admission import MemoryAdmissionStore

    store = MemoryRunStateStore()
    admission = MemoryAdmissionStore(store)
    plan = PlanBuilder("one", "1").step("a", "noop", cost_units=1).build()
    async with await Client.connect(tenant="budgeted", store=store, admission=admission,
                                    roles=("admin",)) as client:
        await admission.set_limits("budgeted", LimitsPatch.parse(
            {"monthlyBudgetUnits": 2, "budgetPolicy": "block"}))
        first = await client.start_run(plan, run_id="first")
        assert (await first.result(timeout=30)).status == RunStatus.COMPLETED
        for attempt in ("second", "third"):
            with pytest.raises(QuotaExceeded) as refused:
                await client.start_run(plan, run_id=attempt)
            assert refused.value.details == {"kind": "budget", "usedUnits": 2,
                                             "budgetUnits": 2}
            assert await store.get_run("budgeted", attempt) is None
        assert [c.threshold for c in await admission.crossings("budgeted")] == [80, 100]
        # A rebuild from the log is byte-identical, and so is a second one.
        rebuilt = rows_bytes(await usage_rows(store, "budgeted", PriceTable()))
        assert rebuilt == rows_bytes(await usage_rows(store, "budgeted", PriceTable()))
        assert b'"runId":"first"' in rebuilt
        await store.close()


def test_the_service_reads_its_price_table_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from dvt_api.settings import ApiSettings
    from dvt_engine.errors import UsageError

    monkeypatch.setenv("DVT_API_PRICES", '{"computeUnitsPerSecond": 2, "unitsPerRun": 0}')
    prices = ApiSettings(dev=True).prices
    assert (prices.compute_units_per_second, prices.units_per_run) == (2, 0)
    assert prices.data_units_per_mib == Decimal("0.01")
    monkeypatch.setenv("DVT_API_PRICES", '{"computeUnitsPerSecond": -1}')
    with pytest.raises(UsageError, match=r"prices\.computeUnitsPerSecond"):
        ApiSettings(dev=True)


async def test_a_log_not_written_since_its_last_fold_is_not_read_again() -> None:
    from dvt_engine.builder import PlanBuilder
    from dvt_engine.client import Client
    from dvt_engine.cost import usage_rows
    from dvt_engine.models.run import RunStatus
    from dvt_engine.stores.memory import MemoryRunStateStore

    class CountingStore(MemoryRunStateStore):
        """The memory store, counting the run logs it is asked for."""

        reads: list[str] = []

        async def fetch_events(self, tenant_id: str, run_id: str, *args: Any,
                               **kwargs: Any) -> Any:
            self.reads.append(run_id)
            return await super().fetch_events(tenant_id, run_id, *args, **kwargs)

    store = CountingStore()
    plan = PlanBuilder("memo", "1").step("a", "noop", cost_units=1).build()
    async with await Client.connect(tenant="memo", store=store) as client:
        for run_id in ("m1", "m2"):
            assert (await (await client.start_run(plan, run_id=run_id)).result(
                timeout=30)).status == RunStatus.COMPLETED
        first = rows_bytes(await usage_rows(store, "memo", PriceTable()))
        assert sorted(store.reads) == ["m1", "m2"]
        store.reads.clear()
        assert rows_bytes(await usage_rows(store, "memo", PriceTable())) == first
        assert store.reads == []
        # Another price table is another fold; a run written since is read again.
        await usage_rows(store, "memo", PriceTable(units_per_run=Decimal(3)))
        assert sorted(store.reads) == ["m1", "m2"]
        store.reads.clear()
        assert (await (await client.start_run(plan, run_id="m3")).result(
            timeout=30)).status == RunStatus.COMPLETED
        grown = rows_bytes(await usage_rows(store, "memo", PriceTable()))
        assert store.reads == ["m3"]
        assert b'"runId":"m3"' in grown
        assert len(grown) > len(first)
    await store.close()
