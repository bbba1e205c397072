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
    late_resumes: list[str] = field(default_factory=list)

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


def pause_latencies(events: list[Event]) -> tuple[list[float], list[str], list[str]]:
    """PAUSE to no-new-step per accepted PAUSE; steps started while paused; late RunResumed.

    The latency runs from the SignalAccepted of a PAUSE to the later of its RunPaused and the
    last StepStarted before that RunPaused (a step the engine was already starting). A
    StepStarted after RunPaused while no RESUME has been accepted since is a broken pause (a
    problem); one after a RESUME was accepted but before its RunResumed was written is a log
    written out of order (reported apart: the step was allowed, the log says otherwise).
    """
    latencies: list[float] = []
    problems: list[str] = []
    late: list[str] = []
    accepted_at: dict[str, Any] = {}
    last_step_start: Any = None
    paused = wanted_paused = False
    for e in events:
        kind = e.payload.get("signalType") if e.event_type == "SignalAccepted" else None
        if kind in ("PAUSE", "RESUME") and not e.payload.get("noOp"):
            wanted_paused = kind == "PAUSE"
            if kind == "PAUSE":
                accepted_at[str(e.payload.get("signalId"))] = e.persisted_at
                last_step_start = None
        elif e.event_type == "StepStarted":
            if paused:
                where = f"{e.run_id}: step {e.step_id} StepStarted at runSeq {e.run_seq}"
                if wanted_paused:
                    problems.append(f"{where} while paused (log {trace(events)})")
                else:
                    late.append(f"{where} after RESUME accepted, before RunResumed "
                                f"(log {trace(events)})")
            last_step_start = e.persisted_at
        elif e.event_type == "RunPaused":
            paused = True
            began = accepted_at.pop(str(e.caused_by_signal_id), None)
            if began is not None and e.persisted_at is not None:
                end = max(e.persisted_at, last_step_start or e.persisted_at)
                latencies.append((end - began).total_seconds())
        elif e.event_type in ("RunResumed", "RunCompleted", "RunFailed", "RunCancelled"):
            paused = False
    return latencies, problems, late


async def verify_runs(store: RunStateStore, tenant: str, runs: list[str], steps: list[str],
                      signals: dict[str, list[SentSignal]], concurrency: int = 8) -> Verdict:
    """Check every run (``concurrency`` at a time); the verdict."""
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
                found, wrong, late = pause_latencies(events)
                verdict.pause_latencies_s.extend(found)
                verdict.problems.extend(wrong)
                verdict.late_resumes.extend(late)
            verdict.checked += 1

    await asyncio.gather(*(one(r) for r in runs))
    return verdict
