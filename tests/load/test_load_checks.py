"""The harness's own checks, on hand-made logs: each must notice the fault it is there for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from benchmarks.load.bare_driver import history_problems
from benchmarks.load.driver import LoadState, note_mark
from benchmarks.load.options import TARGETS, parse, parse_chaos, parse_rate
from benchmarks.load.report import percentile, phases_of, render_phases
from benchmarks.load.verify import SentSignal, log_problems, pause_latencies, signal_problems
from dvt_engine.models.events import Event

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(seq: int, kind: str, step: str | None = None, *, key: str | None = None,
       at_ms: int | None = None, signal: str | None = None, **payload: Any) -> Event:
    """An event with only what the checks read (model_construct: no envelope validation)."""
    return Event.model_construct(
        run_id="r1", run_seq=seq, event_type=kind, step_id=step, logical_attempt_id=1,
        idempotency_key=key or f"{seq:064x}", caused_by_signal_id=signal, payload=payload,
        persisted_at=T0 + timedelta(milliseconds=at_ms if at_ms is not None else seq * 10))


def whole_log() -> list[Event]:
    return [ev(1, "RunStarted"), ev(2, "StepStarted", "s1"), ev(3, "StepCompleted", "s1"),
            ev(4, "RunCompleted")]


def test_a_whole_log_has_no_problem() -> None:
    assert log_problems("r1", whole_log(), ["s1"]) == []


def test_a_gap_a_duplicate_and_a_missing_step_are_each_found() -> None:
    log = whole_log()
    gap = [log[0], log[1], log[3].model_copy(update={"run_seq": 4})]
    assert any("runSeq not 1..3" in p and "missing [3]" in p for p in log_problems("r1", gap,
                                                                                   ["s1"]))
    assert any("no StepCompleted" in p for p in log_problems("r1", gap, ["s1"]))
    twice = [*log[:3], ev(4, "StepCompleted", "s1", key=log[2].idempotency_key),
             ev(5, "RunCompleted")]
    found = log_problems("r1", twice, ["s1"])
    assert any("idempotency keys twice" in p for p in found)
    assert any("more than once" in p for p in found)


def test_each_signal_must_be_decided_once_as_answered() -> None:
    log = [ev(1, "RunStarted"), ev(2, "SignalAccepted", signalId="a", signalType="PAUSE"),
           ev(3, "SignalRejected", signalId="b", signalType="RESUME")]
    sent = [SentSignal("r1", "a", "PAUSE", True, False, 0.0),
            SentSignal("r1", "b", "RESUME", False, False, 0.0)]
    assert signal_problems("r1", log, sent) == []
    lost = [*sent, SentSignal("r1", "c", "PAUSE", True, False, 0.0)]
    assert signal_problems("r1", log, lost) == ["r1: signal c (PAUSE) decided 0 times"]
    wrong = [SentSignal("r1", "a", "PAUSE", False, False, 0.0)]
    assert "logged as SignalAccepted" in signal_problems("r1", log, wrong)[0]


CHAIN = {"s1": [], "s2": ["s1"], "s3": ["s2"]}


def test_a_step_in_flight_at_the_pause_counts_toward_its_latency() -> None:
    log = [ev(1, "RunStarted", at_ms=0),
           ev(2, "StepStarted", "s1", at_ms=10), ev(3, "StepCompleted", "s1", at_ms=20),
           ev(4, "SignalAccepted", at_ms=100, signalId="p", signalType="PAUSE"),
           ev(5, "RunPaused", at_ms=200, signal="p"),
           ev(6, "StepStarted", "s2", at_ms=350),      # scheduled before the pause took effect
           ev(7, "SignalAccepted", at_ms=400, signalId="r", signalType="RESUME"),
           ev(8, "RunResumed", at_ms=450, signal="r")]
    latencies, broken = pause_latencies(log, CHAIN)
    assert latencies == [0.25]
    assert broken == []


def test_a_step_scheduled_while_paused_is_a_problem() -> None:
    log = [ev(1, "RunStarted", at_ms=0),
           ev(2, "StepStarted", "s1", at_ms=10),
           ev(3, "SignalAccepted", at_ms=100, signalId="p", signalType="PAUSE"),
           ev(4, "RunPaused", at_ms=200, signal="p"),
           ev(5, "StepCompleted", "s1", at_ms=300),
           ev(6, "StepStarted", "s2", at_ms=350)]      # its dependency ended after RunPaused
    latencies, broken = pause_latencies(log, CHAIN)
    assert latencies == [0.1]
    assert len(broken) == 1
    assert "s2 scheduled while paused: StepStarted at runSeq 6, RunPaused at 4" in broken[0]


def test_rates_chaos_names_and_percentiles_parse() -> None:
    assert parse_rate("1000/min") == 1000 / 60
    assert parse_rate("20/s") == 20.0
    assert parse_chaos("all") == ("pg-restart", "worker-kill", "temporal-restart", "pg-failover")
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([], 0.99) is None


def test_cpu_is_counted_from_the_load_start_and_across_restarted_processes() -> None:
    state = LoadState()
    state.count_cpu({("postgres", 10): 50.0, ("workers", 20): 7.0}, first=True)
    state.count_cpu({("postgres", 10): 52.5, ("workers", 20): 9.0})
    # The worker was killed and replaced: the new process counts from its own start, the
    # killed one's last reading stays counted.
    state.count_cpu({("postgres", 10): 53.0, ("workers", 21): 1.5})
    assert state.cpu_spent == {"postgres": 3.0, "workers": 3.5}


def test_cpu_is_also_counted_by_minute_of_the_load() -> None:
    state = LoadState()
    state.count_cpu({("workers", 20): 7.0}, first=True)
    state.count_cpu({("workers", 20): 9.0})
    state.began -= 90  # the load has run a minute and a half: the next reading is minute 2's
    state.count_cpu({("workers", 20): 12.0})
    assert state.cpu_by_minute == {0: {"workers": 2.0}, 1: {"workers": 3.0}}


def test_a_run_s_time_is_split_into_phases_by_its_marks() -> None:
    options = parse(["--minutes", "2"])
    state = LoadState()
    for n, (started_s, slow_end) in enumerate([(1.0, 0.0), (61.0, 0.5)]):
        run_id = f"r{n}"
        state.started[run_id] = started_s
        state.marks[run_id] = {"call": 100.0 + started_s, "returned": 100.02 + started_s}
        # Events arrive in log order; a repeated StepStarted (a retry) keeps the first mark.
        for kind, at in (("RunStarted", 0.05), ("StepStarted", 0.1), ("StepStarted", 0.3),
                         ("RunCompleted", 0.2 + slow_end)):
            note_mark(state, run_id, kind, 100.0 + started_s + at, 100.0 + started_s + at + 0.01)
    note_mark(state, "not-ours", "RunStarted", 1.0, 1.0)
    assert "not-ours" not in state.marks
    phases = phases_of(options, state)
    assert phases is not None
    first, second = phases["p99ByMinute"]
    assert first["to RunStarted"] == pytest.approx(0.05)
    assert first["to first step"] == pytest.approx(0.05)
    # Only the second minute's run has the slow end, and only that phase shows it.
    assert first["step to end"] == pytest.approx(0.1)
    assert second["step to end"] == pytest.approx(0.6)
    assert second["end seen"] == pytest.approx(0.01)
    assert phases["p99"]["start call"] == pytest.approx(0.02)
    assert any("0.600" in line for line in render_phases(phases))


def test_without_followed_events_there_are_no_phases() -> None:
    state = LoadState()
    state.started["r0"] = 0.0
    state.marks["r0"] = {"call": 1.0, "returned": 1.1}
    assert phases_of(parse(["--minutes", "1"]), state) is None


def test_the_bare_temporal_mode_parses_with_the_temporal_target_and_refuses_dvt_only_options(
        capsys: pytest.CaptureFixture[str]) -> None:
    options = parse(["--engine", "temporal-bare", "--rate", "1000/min", "--minutes", "10",
                     "--stock-server"])
    assert (options.engine, options.rate_per_s, options.stock_server) == (
        "temporal-bare", 1000 / 60, True)
    # The same runs/min line as the dvt Temporal mode, so the two verdicts read alike.
    assert options.targets == TARGETS["temporal"]
    for refused in (["--chaos", "pg-restart"], ["--signals", "5"], ["--steps", "2"],
                    ["--step-ms", "100"]):
        with pytest.raises(SystemExit) as exited:
            parse(["--engine", "temporal-bare", *refused])
        assert exited.value.code == 2
        assert "one no-op activity a run" in capsys.readouterr().err


def test_dvt_attributes_are_a_bare_mode_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(["--engine", "temporal-bare", "--with-dvt-attributes"]).dvt_attributes
    assert not parse(["--engine", "temporal-bare"]).dvt_attributes
    with pytest.raises(SystemExit) as exited:
        parse(["--engine", "temporal", "--with-dvt-attributes"])
    assert exited.value.code == 2
    assert "is for --engine temporal-bare" in capsys.readouterr().err


def test_a_bare_history_must_hold_one_start_one_activity_and_one_completion() -> None:
    whole = ["EVENT_TYPE_WORKFLOW_EXECUTION_STARTED", "EVENT_TYPE_WORKFLOW_TASK_SCHEDULED",
             "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED", "EVENT_TYPE_ACTIVITY_TASK_STARTED",
             "EVENT_TYPE_ACTIVITY_TASK_COMPLETED", "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED"]
    assert history_problems("w", whole) == []
    failed = [*whole[:-1], "EVENT_TYPE_WORKFLOW_EXECUTION_FAILED"]
    assert history_problems("w", failed) == ["w: WORKFLOW_EXECUTION_COMPLETED 0 times"]
    twice = [*whole[:-1], "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED", *whole[-2:]]
    assert history_problems("w", twice) == ["w: ACTIVITY_TASK_SCHEDULED 2 times",
                                            "w: ACTIVITY_TASK_COMPLETED 2 times"]
