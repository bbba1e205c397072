"""Correctness of every run after the load: it ended, its log is whole, its snapshot is true.

For each run: status COMPLETED; runSeq exactly 1..n (no gap, no duplicate); no idempotency key
twice; RunStarted and RunCompleted once and each step started and completed once per logical
attempt; the stored snapshot's checksum equal to the projector's rebuild from the log
(``store.project``) at the same lastEventSeq. Signals: each one sent has exactly one decision
event in its run's log, and it agrees with the decision the sender got back.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dvt_engine.checksum import snapshot_checksum
from dvt_engine.models.events import Event
from dvt_engine.ports import RunStateStore

_ONCE = ("RunStarted", "RunCompleted", "StepStarted", "StepCompleted")


@dataclass
class SentSignal:
    """One signal the driver sent and the decision it got back."""

    run_id: str
    signal_id: str
    kind: str
    accepted: bool
    no_op: bool
    sent_at: float


@dataclass
class Verdict:
    """What the check found, run by run (empty lists: all good)."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    pause_latencies_s: list[float] = field(default_factory=list)
    signals_checked: int = 0

    @property
    def ok(self) -> bool:
        """Whether every run and every signal passed."""
        return not self.problems


def log_problems(run_id: str, events: list[Event], steps: list[str]) -> list[str]:
    """What is wrong with one completed run's log (gaps, duplicates, missing events)."""
    problems: list[str] = []
    seqs = [e.run_seq for e in events]
    if seqs != list(range(1, len(seqs) + 1)):
        missing = sorted(set(range(1, max((s or 0) for s in seqs) + 1)) - set(seqs))
        dup = sorted(s for s, n in Counter(seqs).items() if n > 1)
        problems.append(f"{run_id}: runSeq not 1..{len(seqs)} (missing {missing[:10]}, "
                        f"duplicated {dup[:10]})")
    keys = Counter(e.idempotency_key for e in events)
    twice = [k for k, n in keys.items() if n > 1]
    if twice:
        problems.append(f"{run_id}: idempotency keys twice: {twice[:5]}")
    counts = Counter((e.event_type, e.step_id, e.logical_attempt_id) for e in events
                     if e.event_type in _ONCE)
    extra = {k: n for k, n in counts.items() if n > 1}
    if extra:
        problems.append(f"{run_id}: events written more than once: {extra}")
    for step in steps:
        if not any(t == "StepCompleted" and s == step for (t, s, _a) in counts):
            problems.append(f"{run_id}: step {step} has no StepCompleted")
    for kind in ("RunStarted", "RunCompleted"):
        if not any(t == kind for (t, _s, _a) in counts):
            problems.append(f"{run_id}: no {kind}")
    return problems


def signal_problems(run_id: str, events: list[Event], sent: list[SentSignal]) -> list[str]:
    """Each sent signal decided exactly once in the log, as the sender was told."""
    problems: list[str] = []
    decisions: dict[str, list[Event]] = {}
    for e in events:
        if e.event_type in ("SignalAccepted", "SignalRejected"):
            decisions.setdefault(str(e.payload.get("signalId")), []).append(e)
    for s in sent:
        found = decisions.get(s.signal_id, [])
        if len(found) != 1:
            problems.append(f"{run_id}: signal {s.signal_id} ({s.kind}) decided "
                            f"{len(found)} times")
            continue
        logged = found[0]
        accepted = logged.event_type == "SignalAccepted"
        if accepted != s.accepted or bool(logged.payload.get("noOp")) != s.no_op:
            problems.append(f"{run_id}: signal {s.signal_id} logged as {logged.event_type} "
                            f"noOp={logged.payload.get('noOp')} but answered accepted="
                            f"{s.accepted} noOp={s.no_op} (runSeq {logged.run_seq})")
    return problems


def trace(events: list[Event], limit: int = 60) -> str:
    """A run's log in one line: ``seq:Type[step]``, with the signal type of decisions."""
    parts = []
    for e in events[:limit]:
        what = e.step_id or e.payload.get("signalType") or ""
        parts.append(f"{e.run_seq}:{e.event_type}" + (f"[{what}]" if what else ""))
    return " ".join(parts)


def pause_latencies(events: list[Event], deps: dict[str, list[str]]
                    ) -> tuple[list[float], list[str]]:
    """PAUSE to no-new-step per accepted PAUSE, and steps scheduled while paused.

    A step's StepStarted is written when it begins, which can be after a RunPaused: a step the
    engine scheduled before the pause took effect (its dependencies were complete by then) is
    in flight, and the pause's latency runs from its SignalAccepted to the later of its
    RunPaused and the last such StepStarted. A step started after RunPaused whose dependencies
    completed only after RunPaused was scheduled while paused: a problem.
    """
    latencies: list[float] = []
    problems: list[str] = []
    accepted_at: dict[str, Any] = {}
    completed: dict[str, int] = {}
    window: list[Any] | None = None  # [accepted at, latest end, RunPaused runSeq]
    last_start: Any = None

    def close() -> None:
        nonlocal window
        if window is not None:
            latencies.append((window[1] - window[0]).total_seconds())
            window = None

    for e in events:
        kind = e.payload.get("signalType") if e.event_type == "SignalAccepted" else None
        if kind == "PAUSE" and not e.payload.get("noOp"):
            accepted_at[str(e.payload.get("signalId"))] = e.persisted_at
            last_start = None
        elif e.event_type == "StepCompleted" and e.step_id is not None:
            completed[e.step_id] = e.run_seq or 0
        elif e.event_type == "StepStarted":
            if window is not None:
                late = [d for d in deps.get(e.step_id or "", [])
                        if completed.get(d, 1 << 62) > window[2]]
                if late:
                    problems.append(
                        f"{e.run_id}: step {e.step_id} scheduled while paused: StepStarted at "
                        f"runSeq {e.run_seq}, RunPaused at {window[2]}, its dependencies "
                        f"{late} completed after it (log {trace(events)})")
                elif e.persisted_at is not None:
                    window[1] = max(window[1], e.persisted_at)
            last_start = e.persisted_at
        elif e.event_type == "RunPaused":
            close()
            began = accepted_at.pop(str(e.caused_by_signal_id), None)
            if began is not None and e.persisted_at is not None:
                window = [began, max(e.persisted_at, last_start or e.persisted_at),
                          e.run_seq or 0]
        elif e.event_type in ("RunResumed", "RunCompleted", "RunFailed", "RunCancelled"):
            close()
    close()
    return latencies, problems


async def verify_runs(store: RunStateStore, tenant: str, runs: list[str],
                      deps: dict[str, list[str]], signals: dict[str, list[SentSignal]],
                      concurrency: int = 8) -> Verdict:
    """Check every run (``concurrency`` at a time) of a plan with steps ``deps`` (step to
    its dependencies); the verdict."""
    steps = list(deps)
    verdict = Verdict()
    gate = asyncio.Semaphore(concurrency)

    async def one(run_id: str) -> None:
        async with gate:
            snapshot = await store.get_snapshot(tenant, run_id)
            if snapshot is None:
                verdict.problems.append(f"{run_id}: no snapshot (the run was never registered)")
                return
            if snapshot.status.value != "COMPLETED":
                verdict.problems.append(f"{run_id}: ended {snapshot.status.value}, not "
                                        f"COMPLETED (lastEventSeq {snapshot.last_event_seq})")
            events = await store.fetch_events(tenant, run_id)
            verdict.problems.extend(log_problems(run_id, events, steps))
            replay = await store.project(tenant, run_id)
            if (snapshot_checksum(snapshot) != snapshot_checksum(replay)
                    or snapshot.last_event_seq != replay.last_event_seq):
                verdict.problems.append(
                    f"{run_id}: stored snapshot (seq {snapshot.last_event_seq}) differs from "
                    f"the rebuild (seq {replay.last_event_seq})")
            sent = signals.get(run_id, [])
            if sent:
                verdict.problems.extend(signal_problems(run_id, events, sent))
                verdict.signals_checked += len(sent)
                found, wrong = pause_latencies(events, deps)
                verdict.pause_latencies_s.extend(found)
                verdict.problems.extend(wrong)
            verdict.checked += 1

    await asyncio.gather(*(one(r) for r in runs))
    return verdict
