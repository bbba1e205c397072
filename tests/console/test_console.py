"""The operator console at /ui in headless Chromium against a real `dvt serve` (PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import ApiServer, chain_plan, gated_plan, tenant
from console_helpers import Console, events_of, wait_for_event
from playwright.sync_api import expect
from tcp_proxy import TcpProxy

from dvt_engine.builder import PlanBuilder

LIVE = 20_000  # ms a screen may take to follow the stream (a shared, busy machine)
HOSTILE_STEP = '<img src=x onerror="window.__xss=1">'
HOSTILE_LABEL = "</td><script>window.__xss=2</script>"
# Markup, and characters that start a query or fragment or escape in a link. (No "/": the
# server decodes %2F before routing, so a run id holding one has no reachable URL.)
HOSTILE_RUN = "<i>r<i>?x=1#y&z=%41"


@pytest.fixture
def consoles(browser: Any) -> Iterator[list[Console]]:
    """Consoles opened by a test; closed afterwards, and none may have logged an error."""
    opened: list[Console] = []
    yield opened
    for console in opened:
        console.close()
    # CSP violations and script errors are console errors: the page must have none.
    assert [e for c in opened for e in c.errors] == []


def _open(consoles: list[Console], browser: Any, base_url: str, key: str) -> Console:
    console = Console(browser, base_url, key)
    consoles.append(console)
    return console


def test_an_approval_on_screen_takes_the_run_to_completed_without_reload(
        console_server: ApiServer, browser: Any, consoles: list[Console],
        artifacts_dir: Path) -> None:
    t = tenant()
    runner = console_server.key(t, "runner", "reader")
    approver, approver_id = console_server.key_and_id(t, "approver", "reader")
    with console_server.client(runner) as c:
        run_id = c.post("/v1/runs", json={"plan": gated_plan()}).json()["runId"]
    wait_for_event(console_server, runner, run_id, "StepAwaitingApproval")

    ui = _open(consoles, browser, console_server.base_url, approver)
    expect(ui.page.locator("#roles")).to_have_text("approver, reader")
    ui.open_run(run_id)
    page = ui.page
    expect(page.locator("#run-status")).to_have_text(re.compile(r"^RUNNING"))
    expect(page.locator('svg.dag g.step[data-step-id="signoff"]')).to_have_attribute(
        "data-status", "RUNNING", timeout=LIVE)
    # The DAG has the plan's edges: build -> signoff -> publish.
    edges = page.locator("svg.dag path.edge")
    expect(edges).to_have_count(2)
    assert {(e.get_attribute("data-from"), e.get_attribute("data-to"))
            for e in edges.all()} == {("build", "signoff"), ("signoff", "publish")}
    # An approver has no operator buttons.
    expect(page.locator("button[data-signal=PAUSE]")).to_have_count(0)
    ui.shot(artifacts_dir, "gated-awaiting-approval")

    page.evaluate("window.__sameDocument = 'yes'")
    page.click('button[data-signal=APPROVE_STEP][data-step-id="signoff"]')
    expect(page.locator("#run-status")).to_have_text("COMPLETED", timeout=LIVE)
    expect(page.locator('svg.dag g.step[data-step-id="publish"]')).to_have_attribute(
        "data-status", "SUCCESS")
    expect(page.locator("#stream-state")).to_have_text("ended", timeout=LIVE)
    # No reload happened: the marker set before the click is still there.
    assert page.evaluate("window.__sameDocument") == "yes"
    ui.shot(artifacts_dir, "gated-completed")

    stored = events_of(console_server, runner, run_id)
    approvals = [e for e in stored if e["eventType"] == "SignalAccepted"
                 and e["payload"]["signalType"] == "APPROVE_STEP"]
    assert [a["payload"]["actor"]["id"] for a in approvals] == [approver_id]
    # The events table shows each stored event once, in runSeq order.
    shown = [int(s) for s in page.locator("#events-body tr").evaluate_all(
        "rows => rows.map(r => r.dataset.runSeq)")]
    assert shown == [e["runSeq"] for e in stored]


def test_signal_buttons_follow_the_key_roles(
        console_server: ApiServer, browser: Any, consoles: list[Console],
        artifacts_dir: Path) -> None:
    t = tenant()
    runner = console_server.key(t, "runner", "reader")
    with console_server.client(runner) as c:
        run_id = c.post("/v1/runs", json={"plan": gated_plan()}).json()["runId"]
    wait_for_event(console_server, runner, run_id, "StepAwaitingApproval")

    everything = _open(consoles, browser, console_server.base_url,
                       console_server.key(t, "reader", "operator", "approver"))
    everything.open_run(run_id)
    for signal in ("PAUSE", "CANCEL", "APPROVE_STEP", "REJECT_STEP"):
        expect(everything.page.locator(f"button[data-signal={signal}]")).to_have_count(
            1, timeout=LIVE)

    reader = _open(consoles, browser, console_server.base_url, console_server.key(t, "reader"))
    reader.open_run(run_id)
    page = reader.page
    expect(page.locator('svg.dag g.step[data-step-id="signoff"]')).to_have_attribute(
        "data-status", "RUNNING", timeout=LIVE)
    expect(page.locator("#stream-state")).to_have_text("open", timeout=LIVE)
    expect(page.locator("button[data-signal]")).to_have_count(0)
    reader.shot(artifacts_dir, "reader-no-buttons")

    # The operator's pause, sent from the screen, reaches the reader's screen over its stream.
    everything.page.click("button[data-signal=PAUSE]")
    expect(page.locator("#run-status")).to_have_text(re.compile(r"^PAUSED"), timeout=LIVE)
    expect(page.locator("button[data-signal]")).to_have_count(0)


def test_hostile_labels_and_step_names_render_as_text(
        console_server: ApiServer, browser: Any, consoles: list[Console],
        artifacts_dir: Path) -> None:
    t = tenant()
    runner = console_server.key(t, "runner", "reader")
    plan = (PlanBuilder("<b>plan</b>", "1").step("first", "noop")
            .step(HOSTILE_STEP, "noop", depends_on=["first"]).build())
    with console_server.client(runner) as c:
        created = c.post("/v1/runs", json={"plan": plan, "runId": HOSTILE_RUN,
                                           "labels": {"team": HOSTILE_LABEL}})
        assert created.status_code == 201, created.text
        run_id = created.json()["runId"]
    assert run_id == HOSTILE_RUN
    wait_for_event(console_server, runner, run_id, "RunCompleted")

    ui = _open(consoles, browser, console_server.base_url, runner)
    page = ui.page
    row = page.locator(f'#runs-body tr[data-run-id="{run_id}"]')
    expect(row).to_contain_text(f"team={HOSTILE_LABEL}")
    expect(row).to_contain_text("<b>plan</b> v1")
    ui.shot(artifacts_dir, "hostile-runs")
    row.locator("a.run-link").click()
    expect(page.locator("#run-status")).to_have_text("COMPLETED", timeout=LIVE)
    expect(page.locator("#run-id")).to_have_text(HOSTILE_RUN)
    expect(page.locator("#steps-body tr .step-id").nth(1)).to_have_text(HOSTILE_STEP)
    expect(page.locator("svg.dag g.step title").nth(1)).to_have_text(f"{HOSTILE_STEP} (noop)")
    expect(page.locator("#run-labels")).to_have_text(f"team={HOSTILE_LABEL}")
    ui.shot(artifacts_dir, "hostile-run")
    # Nothing hostile became markup, and no script of it ran.
    assert page.locator("main img, main script, main b, main i").count() == 0
    assert page.evaluate("window.__xss") is None


def test_run_filters_by_status_plan_and_label(
        console_server: ApiServer, browser: Any, consoles: list[Console]) -> None:
    t = tenant()
    runner = console_server.key(t, "runner", "reader")
    with console_server.client(runner) as c:
        done_a = c.post("/v1/runs", json={"plan": chain_plan(1, "alpha"),
                                          "labels": {"team": "a"}}).json()["runId"]
        done_b = c.post("/v1/runs", json={"plan": chain_plan(1, "beta"),
                                          "labels": {"team": "b"}}).json()["runId"]
        gated = c.post("/v1/runs", json={"plan": gated_plan(),
                                         "labels": {"team": "a"}}).json()["runId"]
    for run_id in (done_a, done_b):
        wait_for_event(console_server, runner, run_id, "RunCompleted")
    wait_for_event(console_server, runner, gated, "StepAwaitingApproval")

    ui = _open(consoles, browser, console_server.base_url, runner)
    page = ui.page
    rows = page.locator("#runs-body tr[data-run-id]")

    def shown() -> set[str]:
        return set(rows.evaluate_all("rs => rs.map(r => r.dataset.runId)"))

    expect(rows).to_have_count(3)
    page.fill("#filter-label", "team:a")
    page.click("#filters button[type=submit]")
    expect(rows).to_have_count(2)
    assert shown() == {done_a, gated}
    page.select_option("#filter-status", "COMPLETED")
    page.click("#filters button[type=submit]")
    expect(rows).to_have_count(1)
    assert shown() == {done_a}
    page.fill("#filter-label", "")
    page.select_option("#filter-status", "")
    page.fill("#filter-plan", "beta")
    page.click("#filters button[type=submit]")
    expect(rows).to_have_count(1)
    assert shown() == {done_b}


def test_the_stream_resumes_with_last_event_id_after_a_cut(
        console_server: ApiServer, browser: Any, consoles: list[Console]) -> None:
    t = tenant()
    runner = console_server.key(t, "runner", "reader")
    with console_server.client(runner) as c:
        run_id = c.post("/v1/runs", json={"plan": gated_plan()}).json()["runId"]
    wait_for_event(console_server, runner, run_id, "StepAwaitingApproval")
    proxy = TcpProxy(console_server.base_url)
    try:
        ui = _open(consoles, browser, proxy.url, runner)
        ui.open_run(run_id)
        page = ui.page
        expect(page.locator("#stream-state")).to_have_text("open", timeout=LIVE)
        expect(page.locator('svg.dag g.step[data-step-id="signoff"]')).to_have_attribute(
            "data-status", "RUNNING", timeout=LIVE)
        seen = page.locator("#events-body tr").count()
        last = page.locator("#events-body tr").last.get_attribute("data-run-seq")
        assert proxy.cut() >= 1
        path = f"/v1/runs/{run_id}/stream"
        expect(page.locator("#stream-state")).to_have_text("open", timeout=LIVE)
        with console_server.client(console_server.key(t, "approver")) as c:
            ok = c.post(f"/v1/runs/{run_id}/signals",
                        json={"type": "APPROVE_STEP", "stepId": "signoff"})
            assert ok.status_code == 202, ok.text
        expect(page.locator("#run-status")).to_have_text("COMPLETED", timeout=LIVE)
        heads = proxy.requests_to(path)
        assert len(heads) >= 2
        assert "last-event-id" not in heads[0].lower()
        assert f"last-event-id: {last}" in heads[-1].lower()
        stored = events_of(console_server, runner, run_id)
        runseqs = page.locator("#events-body tr").evaluate_all(
            "rows => rows.map(r => Number(r.dataset.runSeq))")
        assert runseqs == [e["runSeq"] for e in stored]
        assert len(runseqs) > seen
        # The cut itself is logged by the browser as a failed load; nothing else may be.
        ui.errors[:] = [e for e in ui.errors if "net::ERR_" not in e]
    finally:
        proxy.close()


def test_an_unknown_key_is_refused_and_not_kept(console_server: ApiServer, browser: Any) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{console_server.base_url}/ui/")
        page.fill("#api-key", "dvt_sk_" + "x" * 43)
        page.click("#login button[type=submit]")
        expect(page.locator("#login-error")).to_have_text(re.compile(r"^UNAUTHENTICATED: "))
        assert page.evaluate("sessionStorage.length") == 0
        expect(page.locator("#roles")).to_have_count(0)
        # A good key is kept for the tab only, and logging out forgets it.
        key = console_server.key(tenant(), "reader")
        page.fill("#api-key", key)
        page.click("#login button[type=submit]")
        expect(page.locator("#roles")).to_have_text("reader")
        assert page.evaluate("Object.values(sessionStorage)") == [key]
        assert page.evaluate("localStorage.length") == 0
        page.click("#logout")
        expect(page.locator("#api-key")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
    finally:
        context.close()
