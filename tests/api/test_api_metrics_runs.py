"""Run metrics and run state log lines of a real `dvt serve` on a real PostgreSQL.

Runs are created over HTTP and awaited through the server's own run state lines (written after
the run's events were counted), then /metrics is scraped and parsed: each counter must have
moved by exactly what the runs did. A second process on the same store shows that every run
is counted and logged once, by one of them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from api_helpers import ApiServer, chain_plan, start_server, stop_server, tenant
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from secret_helpers import assert_no_secrets

from dvt_api.metrics import MAX_TENANTS, OTHER, ApiMetrics
from dvt_api.store_gauges import StoreGauges
from dvt_engine.builder import PlanBuilder
from dvt_statestore_pg.config import parse_store_url

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
TERMINAL = ("RunCompleted", "RunFailed", "RunCancelled")


def _server(url: str, tmp: Path, name: str) -> ApiServer:
    # Store gauges read on every scrape, so a scrape right after a change sees it.
    return start_server(url, tmp / f"{name}.log", tmp / f"home-{name}",
                        env={"DVT_API_METRICS_STORE_TTL_S": "0"})


def _stop(server: ApiServer) -> None:
    if server.process.poll() is None:
        assert stop_server(server) in (0, -15)


@pytest.fixture(scope="module")
def api_server(api_store_url: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[ApiServer]:
    """`dvt serve --engine reference` whose store gauges are never cached."""
    server = _server(api_store_url, tmp_path_factory.mktemp("api"), "a")
    try:
        yield server
    finally:
        _stop(server)


def scrape(server: ApiServer) -> Samples:
    """Every sample of /metrics, by name and labels."""
    with server.client() as c:
        answer = c.get("/metrics")
    assert answer.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(answer.text)
            for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    """How much one series moved."""
    return value(after, name, **labels) - value(before, name, **labels)


def state_lines(server: ApiServer, run_id: str) -> list[dict[str, Any]]:
    """The server's run state lines of one run, in the order written."""
    lines = [json.loads(line) for line in server.log_text().splitlines()
             if line.startswith("{") and '"run state"' in line]
    return [line for line in lines if line.get("run_id") == run_id]


def wait_state(server: ApiServer, run_id: str, event_type: str) -> dict[str, Any]:
    """Block until ``server`` logged ``event_type`` for the run; that line."""
    line: dict[str, Any] = json.loads(server.wait_for_log(needle(run_id, event_type)))
    return line


def needle(run_id: str, event_type: str) -> str:
    """What a run state line of the run and event type holds (the fields keep their order)."""
    return f'"run_id": "{run_id}", "event_type": "{event_type}"'


def gated_plan() -> dict[str, Any]:
    """An approval gate first: the run stays active until it is signalled."""
    return (PlanBuilder("gate-first", "1").approval("signoff")
            .step("publish", "echo", depends_on=["signoff"], params={"to": "prod"}).build())


def test_runs_steps_and_appends_are_counted_once_with_a_state_line_each(
        api_server: ApiServer) -> None:
    t = tenant()
    key = api_server.key(t, "runner", "reader", "operator")
    trace = uuid.uuid4().hex
    before = scrape(api_server)
    plans = {
        "r-ok": chain_plan(2),
        "r-sleep": PlanBuilder("sleepy", "1").step("nap", "sleep", params={"ms": 200}).build(),
        "r-fail": PlanBuilder("failing", "1").step("boom", "fail").build(),
    }
    with api_server.client(key) as c:
        for run_id, plan in plans.items():
            made = c.post("/v1/runs", json={"plan": plan, "runId": run_id},
                          headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
            assert made.status_code == 201, made.text
        assert c.post("/v1/runs", json={"plan": gated_plan(), "runId": "r-gate"}
                      ).status_code == 201
        for run_id, end in (("r-ok", "RunCompleted"), ("r-sleep", "RunCompleted"),
                            ("r-fail", "RunFailed")):
            wait_state(api_server, run_id, end)
        wait_state(api_server, "r-gate", "RunStarted")
        waiting = scrape(api_server)
        assert value(waiting, "dvt_runs_active", engine="reference") == 1
        for signal, logged in (("PAUSE", "RunPaused"), ("RESUME", "RunResumed"),
                               ("CANCEL", "RunCancelled")):
            answer = c.post("/v1/runs/r-gate/signals", json={"type": signal})
            assert answer.status_code == 202, answer.text
            wait_state(api_server, "r-gate", logged)
        events = sum(c.get(f"/v1/runs/{r}").json()["lastEventSeq"]
                     for r in (*plans, "r-gate"))
    after = scrape(api_server)

    assert delta(after, before, "dvt_runs_started_total", engine="reference") == 4
    for status, count in (("COMPLETED", 2), ("FAILED", 1), ("CANCELLED", 1)):
        assert delta(after, before, "dvt_runs_finished_total", status=status,
                     engine="reference") == count
    assert value(after, "dvt_runs_active", engine="reference") == 0
    step = "dvt_step_duration_seconds"
    assert delta(after, before, f"{step}_count", kind="noop", outcome="completed") == 2
    assert delta(after, before, f"{step}_count", kind="sleep", outcome="completed") == 1
    assert delta(after, before, f"{step}_sum", kind="sleep", outcome="completed") >= 0.2
    assert delta(after, before, f"{step}_count", kind="fail", outcome="failed") == 1
    appends = "dvt_store_append_duration_seconds_count"
    assert delta(after, before, appends, op="register_run", outcome="ok") == 4
    append_calls = sum(delta(after, before, appends, op=op, outcome="ok")
                       for op in ("append", "append_if_last", "append_batch"))
    assert 4 <= append_calls <= events  # each call appends one event or more
    # Every event of these runs came through the outbox once, and was counted once.
    assert delta(after, before, "dvt_projection_lag_seconds_count", reader="outbox") == events
    assert value(after, "dvt_outbox_depth") == 0

    expected = {"r-ok": ["RunStarted", "RunCompleted"], "r-sleep": ["RunStarted", "RunCompleted"],
                "r-fail": ["RunStarted", "RunFailed"],
                "r-gate": ["RunStarted", "RunPaused", "RunResumed", "RunCancelled"]}
    logged: list[dict[str, Any]] = []
    for run_id, types in expected.items():
        lines = state_lines(api_server, run_id)
        assert [line["event_type"] for line in lines] == types
        assert all(line["tenant_id"] == t and line["engine"] == "reference" for line in lines)
        seqs = [line["run_seq"] for line in lines]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        logged += lines
    assert [line["run_status"] for line in state_lines(api_server, "r-gate")] == \
        ["RUNNING", "PAUSED", "RUNNING", "CANCELLED"]
    assert all(line["trace_id"] == trace for line in state_lines(api_server, "r-ok"))
    assert state_lines(api_server, "r-fail")[-1]["code"]
    assert_no_secrets(logged, api_server.log_text(), known=[key])
    exposition = "".join(f"{name}{dict(labels)}" for name, labels in after)
    assert t not in exposition
    assert "r-gate" not in exposition


def test_outbox_depth_and_age_show_a_row_no_process_has_acknowledged(
        api_server: ApiServer) -> None:
    t = tenant()
    with api_server.client(api_server.key(t, "runner")) as c:
        assert c.post("/v1/runs", json={"plan": chain_plan(1), "runId": "r-1"}
                      ).status_code == 201
    wait_state(api_server, "r-1", "RunCompleted")
    config = parse_store_url(api_server.store_url)
    outbox = sql.Identifier(config.schema, "dvt_outbox")
    with psycopg.connect(config.conninfo, autocommit=True) as db:
        # Acknowledged rows are deleted: put back the run's first event's row as if another
        # process had leased it and not acknowledged it yet.
        row = db.execute(sql.SQL(
            "INSERT INTO {} (run_id, run_seq, tenant_id, event_type, claimed_until)"
            " VALUES (%s, 1, %s, 'RunStarted', clock_timestamp() + interval '1 hour')"
            " RETURNING id").format(outbox), ("r-1", t)).fetchone()
        assert row is not None
        try:
            age = db.execute(sql.SQL("SELECT EXTRACT(EPOCH FROM clock_timestamp() - "
                                     "created_at)::float8 FROM {} WHERE id = %s"
                                     ).format(outbox), (row[0],)).fetchone()
            assert age is not None
            pending = scrape(api_server)
        finally:
            db.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(outbox), (row[0],))
    assert value(pending, "dvt_outbox_depth") == 1
    assert age[0] <= value(pending, "dvt_outbox_oldest_age_seconds") < age[0] + 60
    drained = scrape(api_server)
    assert value(drained, "dvt_outbox_depth") == 0
    assert value(drained, "dvt_outbox_oldest_age_seconds") == 0
    assert ("dvt_snapshot_lag_events", frozenset()) in drained


def test_two_processes_on_one_store_count_and_log_each_run_once(
        api_server: ApiServer, tmp_path: Path) -> None:
    other = _server(api_server.store_url, tmp_path, "b")
    try:
        servers = (api_server, other)
        before = [scrape(s) for s in servers]
        t = tenant()
        runs = [f"r-{i}" for i in range(6)]
        with api_server.client(api_server.key(t, "runner")) as c:
            for run_id in runs:
                assert c.post("/v1/runs", json={"plan": chain_plan(2), "runId": run_id}
                              ).status_code == 201
        for run_id in runs:
            _wait_either(servers, needle(run_id, "RunCompleted"))
        after = [scrape(s) for s in servers]
    finally:
        _stop(other)
    for name, labels in (("dvt_runs_started_total", {"engine": "reference"}),
                         ("dvt_runs_finished_total",
                          {"status": "COMPLETED", "engine": "reference"})):
        assert sum(delta(a, b, name, **labels) for a, b in zip(after, before, strict=True)
                   ) == len(runs)
    assert sum(delta(a, b, "dvt_step_duration_seconds_count", kind="noop", outcome="completed")
               for a, b in zip(after, before, strict=True)) == 2 * len(runs)
    for run_id in runs:  # run ids are per tenant: an earlier test has its own r-1
        lines = [line for s in servers for line in state_lines(s, run_id)
                 if line["tenant_id"] == t]
        assert sorted(line["event_type"] for line in lines) == ["RunCompleted", "RunStarted"]


def _wait_either(servers: tuple[ApiServer, ...], needle: str, timeout: float = 60.0) -> None:
    """Until one of the servers logged ``needle`` (each waits on its own log in turn)."""
    rounds = int(timeout / 0.5)
    for _ in range(rounds):
        for server in servers:
            try:
                server.wait_for_log(needle, timeout=0.25)
                return
            except AssertionError:
                continue
    raise AssertionError(f"no server logged {needle!r}")


def test_limit_rejections_are_registered_and_cap_their_tenant_label() -> None:
    metrics = ApiMetrics()
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    assert families["dvt_limit_rejections"].type == "counter"
    for i in range(MAX_TENANTS + 5):
        metrics.limit_rejected(f"t-{i}", "run_starts")
    metrics.limit_rejected("t-0", "signals")
    samples = {(s.labels["tenant"], s.labels["kind"]): s.value
               for f in text_string_to_metric_families(metrics.render().decode())
               if f.name == "dvt_limit_rejections" for s in f.samples
               if s.name.endswith("_total")}
    tenants = {tenant_label for tenant_label, _ in samples}
    assert len(tenants) == MAX_TENANTS + 1
    assert OTHER in tenants
    assert samples[(OTHER, "run_starts")] == 5
    assert samples[("t-0", "signals")] == 1
    with pytest.raises(ValueError, match="unknown limit kind"):
        metrics.limit_rejected("t-0", "anything")


def test_store_gauges_read_the_store_once_per_period_however_often_scraped() -> None:
    class FakeStats:
        active_runs = {"reference": 2}
        snapshot_lag = 3
        outbox_depth = 4
        outbox_oldest_age_s = 5.0

    reads = 0

    async def fake_read() -> FakeStats:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0)  # let the other scrapes arrive while this read is out
        return FakeStats()

    metrics = ApiMetrics()
    gauges = StoreGauges(fake_read, metrics, ttl_s=3600)

    async def scrapes() -> None:
        await asyncio.gather(*(gauges.refresh() for _ in range(10)))
        await gauges.refresh()

    asyncio.run(scrapes())
    assert reads == 1
    text = metrics.render().decode()
    assert 'dvt_runs_active{engine="reference"} 2.0' in text
    assert "dvt_outbox_depth 4.0" in text


def test_a_step_whose_start_another_process_took_is_timed_from_the_store() -> None:
    from dvt_api.run_observer import RunObserver
    from dvt_engine import Client, MemoryStoreSettings, ReferenceSettings
    from dvt_engine.plugins import open_store
    from dvt_engine.steps.registry import default_registry

    async def scenario() -> tuple[Samples, Samples]:
        store = await open_store(MemoryStoreSettings())
        async with await Client.connect(store=store, engine=ReferenceSettings(),
                                        registry=default_registry(), tenant="acme",
                                        project="dw") as client:
            run = await client.start_run(PlanBuilder("p", "1").step("a", "noop")
                                         .step("b", "sleep", params={"ms": 50},
                                               depends_on=["a"]).build(), run_id="r-1")
            assert (await run.result()).status == "COMPLETED"
        events = await store.fetch_events("acme", "r-1")
        seen = []
        for part in (events, [e for e in events if e.event_type != "StepStarted"]):
            metrics = ApiMetrics()
            await RunObserver(store, metrics).committed(part)
            seen.append({(s.name, frozenset(s.labels.items())): s.value
                         for f in text_string_to_metric_families(metrics.render().decode())
                         for s in f.samples})
        await store.close()
        return seen[0], seen[1]

    all_events, without_starts = asyncio.run(scenario())
    for samples in (all_events, without_starts):
        assert value(samples, "dvt_step_duration_seconds_count", kind="noop",
                     outcome="completed") == 1
        assert value(samples, "dvt_step_duration_seconds_count", kind="sleep",
                     outcome="completed") == 1
        assert value(samples, "dvt_step_duration_seconds_sum", kind="sleep",
                     outcome="completed") >= 0.05
        assert value(samples, "dvt_runs_finished_total", status="COMPLETED",
                     engine="reference") == 1
