"""Numbers and the verdict of one load run: a per-minute table, faults, and a pass/fail line.

Correctness (every run completed, logs whole, snapshots equal to their rebuild, each signal
decided once) always decides the verdict. Speed targets (the engine's rate, p99 drift, flat
memory, recovery within 30 s, PAUSE p99 < 1 s) are judged too and printed as their own line,
so a smoke run on a loaded machine can pass on correctness alone (``speed=False``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict
from typing import Any

from benchmarks.load.driver import LoadState
from benchmarks.load.options import LoadOptions
from benchmarks.load.verify import Verdict

MB = 1024 * 1024


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _minutes(options: LoadOptions, state: LoadState) -> list[dict[str, Any]]:
    """Per minute of the load phase: runs started and ended, latency percentiles, RSS."""
    rows = []
    count = max(1, math.ceil(options.seconds / 60.0))
    for m in range(count):
        lo, hi = m * 60.0, min((m + 1) * 60.0, options.seconds)
        ended = [r for r, t in state.ended.items() if lo <= t < hi]
        latencies = [state.ended[r] - t for r, t in state.started.items()
                     if lo <= t < hi and r in state.ended]
        rss = [(d, w) for (t, d, w) in state.rss if lo <= t < hi]
        span = (hi - lo) / 60.0
        rows.append({
            "minute": m + 1,
            "started": sum(1 for t in state.started.values() if lo <= t < hi),
            "completedPerMin": len(ended) / span,
            "stepsPerMin": len(ended) * options.steps / span,
            "p50": percentile(latencies, 0.50), "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99),
            "cpuMsPerRun": {part: 1000 * seconds / len(ended)
                            for part, seconds in state.cpu_by_minute.get(m, {}).items()}
            if ended else {},
            "driverRssMB": statistics.fmean(d for d, _ in rss) / MB if rss else None,
            "workerRssMB": statistics.fmean(w for _, w in rss) / MB if rss else None,
        })
    return rows


#: A run's phases: name, the mark it starts at, the mark it ends at (see LoadState.marks).
PHASES = (("start call", "call", "returned"), ("to RunStarted", "call", "runStarted"),
          ("to first step", "runStarted", "stepStarted"), ("step to end", "stepStarted", "ended"),
          ("end seen", "ended", "seen"))


def _phase_times(state: LoadState, runs: list[str]) -> dict[str, list[float]]:
    """Each phase's duration for the runs that reached both of its marks."""
    out: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    for run_id in runs:
        marks = state.marks.get(run_id, {})
        for name, begin, end in PHASES:
            if begin in marks and end in marks:
                out[name].append(marks[end] - marks[begin])
    return out


def phases_of(options: LoadOptions, state: LoadState) -> dict[str, Any] | None:
    """p50 and p99 of each phase over the load, and p99 per minute (by start), or None
    when no run left marks (no store to follow: temporal-bare)."""
    if not any(len(m) > 2 for m in state.marks.values()):
        return None
    whole = _phase_times(state, list(state.started))
    by_minute = []
    for m in range(max(1, math.ceil(options.seconds / 60.0))):
        lo, hi = m * 60.0, (m + 1) * 60.0
        times = _phase_times(state, [r for r, t in state.started.items() if lo <= t < hi])
        by_minute.append({name: percentile(v, 0.99) for name, v in times.items()})
    return {"p50": {n: percentile(v, 0.5) for n, v in whole.items()},
            "p99": {n: percentile(v, 0.99) for n, v in whole.items()},
            "p99ByMinute": by_minute}


def _growth(first: float | None, last: float | None) -> float | None:
    if first is None or last is None or first <= 0:
        return None
    return (last - first) / first


#: The share of a target rate that counts as kept (see summarize).
KEPT = 0.99


def _cpu(state: LoadState) -> dict[str, Any]:
    """CPU seconds per part over the load phase, its share of the machine, per run ended."""
    spent = dict(state.cpu_spent)
    capacity = (os.cpu_count() or 1) * state.load_end_s
    ended = sum(1 for t in state.ended.values() if t < state.load_end_s)
    return {"seconds": spent, "capacitySeconds": capacity,
            "share": {p: s / capacity for p, s in spent.items()} if capacity else {},
            "msPerRunEnded": {p: 1000 * s / ended for p, s in spent.items()} if ended else {}}


def summarize(options: LoadOptions, state: LoadState, verdict: Verdict) -> dict[str, Any]:
    """The whole report as JSON data, with the verdict lines."""
    minutes = _minutes(options, state)
    latencies = [state.ended[r] - t for r, t in state.started.items() if r in state.ended]
    # With 3+ minutes the first is warm-up (caches, JIT-less Python imports, pools filling).
    base = minutes[1] if len(minutes) >= 3 else minutes[0]
    last = minutes[-1]
    drift = _growth(base["p99"], last["p99"])
    driver_growth = _growth(base["driverRssMB"], last["driverRssMB"])
    worker_growth = _growth(base["workerRssMB"], last["workerRssMB"])
    completed = sum(1 for s in state.status.values() if s == "RunCompleted")
    whole = options.seconds / 60.0
    runs_per_min = sum(1 for t in state.ended.values() if t < options.seconds) / whole
    # Over the whole run, drain included: what the system finished, however late.
    last_end = max(state.ended.values(), default=0.0)
    overall = len(state.ended) / (last_end / 60.0) if last_end else 0.0
    t = options.targets
    speed: list[str] = []
    # The runs started in the load's last moments end after it: 1 % of slack keeps them from
    # turning a rate that was kept into a miss.
    if t.runs_per_min is not None and runs_per_min < KEPT * t.runs_per_min:
        speed.append(f"{runs_per_min:.0f} runs/min < {t.runs_per_min:.0f}")
    if t.steps_per_min is not None and runs_per_min * options.steps < KEPT * t.steps_per_min:
        speed.append(f"{runs_per_min * options.steps:.0f} steps/min < {t.steps_per_min:.0f}")
    if drift is not None and drift > t.p99_drift:
        speed.append(f"p99 drift {drift:+.0%} > {t.p99_drift:.0%}")
    for name, growth in (("driver", driver_growth), ("worker", worker_growth)):
        if growth is not None and growth > t.rss_growth:
            speed.append(f"{name} RSS {growth:+.0%} > {t.rss_growth:.0%}")
    for c in state.chaos:
        if c.in_flight_done_s is None or c.in_flight_done_s > t.recovery_s:
            speed.append(f"{c.kind} recovery {c.in_flight_done_s} s > {t.recovery_s:.0f} s")
    pause_p99 = percentile(verdict.pause_latencies_s, 0.99)
    if pause_p99 is not None and pause_p99 > t.pause_p99_s:
        speed.append(f"PAUSE->no-new-step p99 {pause_p99:.2f} s > {t.pause_p99_s:.0f} s")
    correctness = list(verdict.problems)
    if not state.drained:
        hung = state.running()
        correctness.append(f"{len(hung)} runs had not ended {options.drain_s:.0f} s after "
                           f"the load (a backlog or hung; not verified): {hung[:10]}")
    correctness += [f"{c.kind}: could not inject: {c.error}" for c in state.chaos if c.error]
    return {
        "options": {**asdict(options), "targets": asdict(options.targets)},
        "runsStarted": len(state.started), "runsEnded": len(state.ended),
        "runsCompleted": completed, "runsPerMin": runs_per_min,
        "stepsPerMin": runs_per_min * options.steps,
        "overallRunsPerMin": overall, "lastEndS": last_end,
        # Where a run's end is timestamped (bare_driver.py says why the two differ).
        "endSeenAt": ("the workflow's result returned" if options.engine == "temporal-bare"
                      else "RunCompleted arrived on the tenant stream"),
        "latency": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
                    "p99": percentile(latencies, 0.99)},
        "p99Drift": drift, "driverRssGrowth": driver_growth, "workerRssGrowth": worker_growth,
        "storeLag": {"p50": percentile(state.lags_s, 0.5), "p99": percentile(state.lags_s, 0.99),
                     "max": max(state.lags_s, default=None)},
        "startErrors": state.start_errors, "lateStarts": state.late_starts,
        "streamRestarts": state.stream_restarts, "signalErrors": state.signal_errors,
        "signalsSkipped": state.signals_skipped,
        "signalsSent": sum(len(v) for v in state.signals.values()),
        "signalsChecked": verdict.signals_checked,
        "pauseToNoNewStep": {"count": len(verdict.pause_latencies_s),
                             "p50": percentile(verdict.pause_latencies_s, 0.5),
                             "p99": pause_p99},
        "cpu": _cpu(state) if state.cpu_spent else None,
        "minutes": minutes, "phases": phases_of(options, state),
        "chaos": [asdict(c) for c in state.chaos],
        "chaosSkipped": state.skipped_chaos, "runsVerified": verdict.checked,
        "correctnessProblems": correctness, "speedMisses": speed,
        "correct": not correctness, "fast": not speed,
    }


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def render_phases(phases: dict[str, Any]) -> list[str]:
    """Where a run's time went: p99 of each phase by minute, then p50 / p99 overall."""
    names = [name for name, _, _ in PHASES]
    lines = ["where the time went, p99 s by minute of start: "
             + ", ".join(f"{n}" for n in names)]
    for i, row in enumerate(phases["p99ByMinute"]):
        lines.append(f"{i + 1:>6}  " + "  ".join(f"{_f(row[n], '.3f'):>7}" for n in names))
    lines.append("  all   p50 " + ", ".join(f"{n} {_f(phases['p50'][n], '.3f')}" for n in names))
    lines.append("  all   p99 " + ", ".join(f"{n} {_f(phases['p99'][n], '.3f')}" for n in names))
    return lines


def render(report: dict[str, Any]) -> str:
    """The report as the text `nox -s load` prints."""
    o = report["options"]
    lines = [f"load: engine={o['engine']} rate={o['rate_per_s'] * 60:.0f}/min "
             f"minutes={o['minutes']} steps={o['steps']} chaos={','.join(o['chaos']) or '-'} "
             f"signals={o['signals_per_s']}/s",
             "minute  started  done/min  steps/min   p50 s   p95 s   p99 s  driver MB  worker MB"]
    for m in report["minutes"]:
        lines.append(f"{m['minute']:>6}  {m['started']:>7}  {m['completedPerMin']:>8.0f}  "
                     f"{m['stepsPerMin']:>9.0f}  {_f(m['p50']):>6}  {_f(m['p95']):>6}  "
                     f"{_f(m['p99']):>6}  {_f(m['driverRssMB'], '.0f'):>9}  "
                     f"{_f(m['workerRssMB'], '.0f'):>9}")
    lat, lag = report["latency"], report["storeLag"]
    lines.append(f"runs: {report['runsStarted']} started, {report['runsCompleted']} completed, "
                 f"{report['runsVerified']} verified; {report['runsPerMin']:.0f} runs/min, "
                 f"{report['stepsPerMin']:.0f} steps/min during the load; all ended by "
                 f"{report['lastEndS']:.0f} s: {report['overallRunsPerMin']:.0f} runs/min "
                 f"overall")
    lines.append(f"start->complete: p50 {_f(lat['p50'])} s, p95 {_f(lat['p95'])} s, "
                 f"p99 {_f(lat['p99'])} s; p99 drift {_f(report['p99Drift'], '+.0%')} "
                 f"(end: {report['endSeenAt']})")
    parts = sorted({p for m in report["minutes"] for p in m.get("cpuMsPerRun", {})})
    if parts:
        lines.append("CPU ms per run ended, by minute: " + ", ".join(parts))
        for m in report["minutes"]:
            cpu = m.get("cpuMsPerRun", {})
            lines.append(f"{m['minute']:>6}  " + "  ".join(
                f"{_f(cpu.get(p), '.1f'):>7}" for p in parts))
    phases = report.get("phases")
    if phases:
        lines += render_phases(phases)
    if lag["max"] is not None:  # none without a store (temporal-bare)
        lines.append(f"store lag: p50 {_f(lag['p50'], '.3f')} s, p99 {_f(lag['p99'], '.3f')} s, "
                     f"max {_f(lag['max'], '.3f')} s")
    lines.append(f"RSS growth: driver {_f(report['driverRssGrowth'], '+.0%')}, worker "
                 f"{_f(report['workerRssGrowth'], '+.0%')}; start retries "
                 f"{report['startErrors']}, late starts {report['lateStarts']}")
    cpu = report.get("cpu")
    if cpu:
        parts = ", ".join(
            f"{p} {s:.0f} s ({cpu['share'].get(p, 0):.0%}"
            + (f", {cpu['msPerRunEnded'][p]:.0f} ms/run" if p in cpu["msPerRunEnded"] else "")
            + ")" for p, s in cpu["seconds"].items())
        used = sum(cpu["seconds"].values()) / cpu["capacitySeconds"] if cpu["capacitySeconds"] \
            else 0.0
        lines.append(f"CPU during the load: {parts}; {used:.0%} of the machine's cores")
    for c in report["chaos"]:
        lines.append(f"chaos {c['kind']} at {c['at_s']:.0f} s: fault took {c['took_s']:.1f} s, "
                     f"{c['in_flight']} runs in flight, first new completion after "
                     f"{_f(c['first_new_completion_s'], '.1f')} s, in-flight runs done after "
                     f"{_f(c['in_flight_done_s'], '.1f')} s" + (f" ERROR {c['error']}"
                                                                 if c["error"] else ""))
    if report["chaosSkipped"]:
        lines.append(f"chaos not applicable on {o['engine']}: {', '.join(report['chaosSkipped'])}")
    if report["signalsSent"]:
        p = report["pauseToNoNewStep"]
        lines.append(f"signals: {report['signalsSent']} sent, {report['signalsChecked']} "
                     f"checked decided once; PAUSE->no-new-step p50 {_f(p['p50'])} s, "
                     f"p99 {_f(p['p99'])} s over {p['count']} pauses; "
                     f"{report['signalsSkipped']} storm ticks skipped (engine behind)")
    for problem in report["correctnessProblems"][:30]:
        lines.append(f"PROBLEM {problem}")
    lines.append(("PASS" if report["correct"] else "FAIL") + " correctness; "
                 + ("PASS targets" if report["fast"] else
                    "MISS targets: " + "; ".join(report["speedMisses"])))
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    """The report as a JSON file."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2, default=str)
