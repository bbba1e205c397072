"""The live progress display: rendered to a recording rich Console that claims a terminal,
fed by real runs on the reference engine; plain lines stay byte-identical without a terminal."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import PLANS, Result, invoke
from live_helpers import counts_in, draw_on_terminal, last_frame, recording_console
from rich.console import Console

from dvt_cli import live
from dvt_cli.plans import store_plan
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunContext
from dvt_engine.models.signals import Actor, Role, SignalRequest, SignalType
from dvt_engine.stores.memory import MemoryRunStateStore


async def _events_until(store: MemoryRunStateStore, run_id: str, feed: Any,
                        stop: str, after: int = 0) -> int:
    async for event in store.follow("t", run_id, after_seq=after):
        feed(event)
        if event.event_type == stop:
            return event.run_seq or after
    raise AssertionError(f"the log of {run_id} ended before {stop}")


async def test_an_approval_gate_holds_the_run_up_until_approved() -> None:
    store = MemoryRunStateStore()
    engine = ReferenceEngine(store)
    try:
        ref = await store_plan(store, (PLANS / "approval.json").read_bytes())
        await engine.start_run(ref, RunContext(tenant_id="t", project_id="p",
                                               environment_id="dev", run_id="r-gate"))
        console = recording_console()
        with live.live_view("r-gate", ["prepare", "signoff", "publish"], console) as view:
            seq = await _events_until(store, "r-gate", view.feed, "StepAwaitingApproval")
            waiting = last_frame(console, "r-gate")
            assert counts_in(waiting) == {"done": 1, "running": 0, "awaiting approval": 1,
                                          "failed": 0, "waiting": 1}
            assert "held up by signoff (awaiting approval for" in waiting
            assert "dvt signal r-gate approve signoff" in waiting
            header = await store.get_run("t", "r-gate")
            assert header is not None
            decision = await engine.signal(engine.run_ref_for(header), SignalRequest(
                signal_id="s-1", type=SignalType.APPROVE_STEP, tenant_id="t", run_id="r-gate",
                payload={"stepId": "signoff", "decision": "approve"},
                actor=Actor(id="ann", roles=(Role.APPROVER,))))
            assert decision.accepted
            await _events_until(store, "r-gate", view.feed, "RunCompleted", after=seq)
        done = last_frame(console, "r-gate")
        assert "COMPLETED" in done.splitlines()[0]
        assert counts_in(done) == {"done": 3, "running": 0, "awaiting approval": 0,
                                   "failed": 0, "waiting": 0}
        assert "held up by" not in done
        # Every event also printed as its plain line, above the block.
        assert "[   1] run: RunStarted" in console.export_text(clear=False)
    finally:
        await engine.close()


def _event(seq: int, event_type: str, step: str | None, at: datetime) -> Event:
    return Event(event_id=f"e{seq}", event_type=event_type, tenant_id="t", project_id="p",
                 environment_id="dev", run_id="r", step_id=step, plan_id="p", plan_version="1",
                 idempotency_key="0" * 64, emitted_at=at, emitted_by="engine", run_seq=seq)


def test_the_longest_running_step_holds_the_run_up() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    now = [start]
    progress = live.Progress("r", ["a", "b", "c"], clock=lambda: now[0])
    progress.apply(_event(1, "RunStarted", None, start))
    progress.apply(_event(2, "StepStarted", "b", start + timedelta(seconds=1)))
    progress.apply(_event(3, "StepStarted", "a", start + timedelta(seconds=2)))
    progress.apply(_event(4, "StepFailed", "c", start + timedelta(seconds=2)))
    now[0] = start + timedelta(seconds=75)
    assert progress.holding() == ("b", "running for 1m14s")
    assert progress.elapsed() == 75.0
    assert progress.counts() == {"done": 0, "running": 2, "awaiting approval": 0, "failed": 1,
                                 "waiting": 0}
    progress.apply(_event(5, "StepAwaitingApproval", "a", start + timedelta(seconds=70)))
    assert progress.holding() == ("a", "awaiting approval for 5.0s")


@pytest.fixture
def dvt(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Any:
    """``dvt(*args, **env)`` on the reference engine and the memory store."""
    def call(*args: str, **env: str) -> Result:
        base = {"DVT_HOME": str(tmp_path / "home"), "DVT_ENGINE": "reference"}
        return invoke(capsys, list(args), {**base, **env})
    return call


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Console:
    """The command's display, drawn on a recording console that claims a terminal."""
    return draw_on_terminal(monkeypatch)


def test_dvt_run_on_a_terminal_shows_the_display(dvt: Any, terminal: Console) -> None:
    result = dvt("run", str(PLANS / "fail-fast-parallel.json"), "--run-id", "r-live")
    assert result.code == 1, result
    frame = last_frame(terminal, "r-live")
    assert "FAILED" in frame.splitlines()[0]
    counts = counts_in(frame)
    assert counts["failed"] >= 1
    assert sum(counts.values()) == len(_plan_steps("fail-fast-parallel.json"))
    # The final snapshot still prints as plain lines after the display.
    assert "checksum " in result.stdout
    assert "[   1] run: RunStarted" not in result.stdout


def _plan_steps(name: str) -> list[str]:
    import json

    return [s["stepId"] for s in json.loads((PLANS / name).read_text())["steps"]]


def _normalised(stdout: str) -> str:
    return re.sub(r"duration \d+ ms", "duration N ms", stdout)


@pytest.mark.parametrize("opt_out", [("--no-live",), ("--json",), ()])
def test_opting_out_prints_the_plain_lines(dvt: Any, terminal: Console,
                                           monkeypatch: pytest.MonkeyPatch,
                                           opt_out: tuple[str, ...]) -> None:
    env = {} if opt_out else {"DVT_NO_LIVE": "1"}
    shown = dvt("run", str(PLANS / "linear-chain.json"), "--run-id", "r-plain", *opt_out, **env)
    assert shown.code == 0, shown
    assert terminal.export_text() == ""
    monkeypatch.setattr(live, "stdout_is_terminal", lambda: False)
    plain = dvt("run", str(PLANS / "linear-chain.json"), "--run-id", "r-plain", *opt_out)
    if "--json" in opt_out:
        # Times differ between two runs; the checksum covers everything else.
        assert shown.json()["snapshotChecksum"] == plain.json()["snapshotChecksum"]
        assert len(shown.stdout.splitlines()) == 1
    else:
        assert _normalised(shown.stdout) == _normalised(plain.stdout)


def test_without_a_terminal_the_lines_are_those_of_the_events(dvt: Any) -> None:
    result = dvt("run", str(PLANS / "linear-chain.json"), "--run-id", "r-lines")
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run r-lines started on reference (plan ")
    events = [line for line in lines if line.startswith("[")]
    assert events[0] == "[   1] run: RunStarted"
    assert events[-1].endswith("] run: RunCompleted")
    assert "\x1b" not in result.stdout
