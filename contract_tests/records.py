"""Recorded runs and their comparison (contract §10): normalized events, the parity
checks and a readable diff.

Two runs of one plan and one scenario are equivalent when they have

- the same snapshot checksum (contract §5.5),
- the same multiset of normalized events (:func:`normalize_events`),
- the same order of events within each step and within the run-level stream, and
- on each side, an order consistent with the DAG: no StepStarted of a step before the
  StepCompleted or StepSkipped of each of its dependencies.

:func:`compare_runs` checks two recorded runs and returns a :class:`ParityReport` with a readable
unified diff. ``contract_tests.parity.run_parity`` drives the runs it compares.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dvt_engine.checksum import canonical_json, parity_form, snapshot_checksum
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunHeader
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import RunStateStore

RUN_STREAM = "(run)"

# Which payload fields of each event type are engine-independent (contract §10). Anything else
# (engine names and references, timestamps, messages worded by an engine's SDK) is dropped.
_PAYLOAD_FIELDS: Mapping[str, tuple[str, ...]] = {
    "RunApproved": ("approver",),
    "RunStarted": (),
    "StepStarted": ("kind", "resourceClass"),
    "StepAwaitingApproval": (),
    "StepCompleted": ("output", "artifacts"),
    "StepFailed": ("error",),
    "StepSkipped": ("reason",),
    "SignalAccepted": ("signalId", "signalType", "stepId", "errorCode", "noOp", "request"),
    "SignalRejected": ("signalId", "signalType", "stepId", "errorCode", "noOp", "request"),
    "RunPaused": ("ordinal",),
    "RunResumed": ("ordinal",),
    "RunCompleted": ("succeeded", "skipped"),
    "RunFailed": ("stepId", "code"),
    "RunCancelled": ("reason",),
    "RunAwaitingOperator": ("ordinal", "failedSteps"),
}


@dataclass(frozen=True, order=True)
class NormalizedEvent:
    """The engine-independent content of one event; hashable, so logs compare as multisets."""

    event_type: str
    step_id: str | None
    logical_attempt_id: int
    detail: str = "{}"  # canonical JSON of the engine-independent payload

    @property
    def payload(self) -> dict[str, Any]:
        """The engine-independent payload as data."""
        value: dict[str, Any] = json.loads(self.detail)
        return value

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in golden expectations."""
        return {
            "eventType": self.event_type,
            "stepId": self.step_id,
            "logicalAttemptId": self.logical_attempt_id,
            "payload": self.payload,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormalizedEvent:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            event_type=str(data["eventType"]),
            step_id=data.get("stepId"),
            logical_attempt_id=int(data.get("logicalAttemptId", 1)),
            detail=_canonical(data.get("payload") or {}),
        )

    @property
    def stream(self) -> str:
        """The ordered stream this event belongs to: its step, or the run-level stream."""
        return self.step_id if self.step_id is not None else RUN_STREAM

    def line(self) -> str:
        """One readable line for diffs."""
        who = self.step_id if self.step_id is not None else "RUN"
        return f"{self.event_type} {who}#{self.logical_attempt_id} {self.detail}"


def _canonical(value: Any) -> str:
    return canonical_json(value).decode("utf-8")


def _payload_view(event_type: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    fields = _PAYLOAD_FIELDS.get(event_type, ())
    view: dict[str, Any] = {}
    for name in fields:
        value = payload.get(name)
        if value is None or value is False or (isinstance(value, list | tuple) and not value):
            continue  # an absent field and its default say the same thing
        if name == "error" and isinstance(value, Mapping):
            value = {"code": value.get("code"), "retryable": bool(value.get("retryable", False))}
        elif name == "request" and isinstance(value, Mapping):
            # Of the request only the approval decision is part of "signal type and decision".
            decision = value.get("decision")
            if decision is None:
                continue
            name, value = "decision", decision
        elif name == "artifacts":
            value = [_artifact(a) for a in value]
        view[name] = value
    return view


def _artifact(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return {k: v for k, v in raw.items() if v is not None}
    return raw


def normalize_event(event: Event) -> NormalizedEvent:
    """The engine-independent content of one event (contract §10)."""
    return NormalizedEvent(
        event_type=event.event_type,
        step_id=event.step_id,
        logical_attempt_id=event.logical_attempt_id,
        detail=_canonical(_payload_view(event.event_type, event.payload)),
    )


def normalize_events(events: Sequence[Event]) -> list[NormalizedEvent]:
    """Normalize a run's log, in runSeq order."""
    ordered = sorted(events, key=lambda e: (e.run_seq is None, e.run_seq or 0))
    return [normalize_event(e) for e in ordered]


@dataclass(frozen=True)
class RunRecord:
    """One side of a comparison: a finished run's snapshot, log and DAG."""

    label: str
    snapshot: RunSnapshot
    events: tuple[NormalizedEvent, ...]
    dependencies: Mapping[str, tuple[str, ...]]
    #: Steps whose join needs fewer than all dependencies (plan v1.3), with how many.
    needed: Mapping[str, int] = field(default_factory=dict)

    @property
    def checksum(self) -> str:
        """The snapshot checksum of contract §5.5."""
        return snapshot_checksum(self.snapshot)

    @classmethod
    def of(
        cls,
        label: str,
        header: RunHeader,
        snapshot: RunSnapshot,
        events: Sequence[Event],
    ) -> RunRecord:
        """Build a record from a run's header, snapshot and raw log."""
        return cls(
            label=label,
            snapshot=snapshot,
            events=tuple(normalize_events(events)),
            dependencies={s.step_id: tuple(s.depends_on) for s in header.steps},
        )

    @classmethod
    async def from_store(
        cls, label: str, store: RunStateStore, tenant_id: str, run_id: str
    ) -> RunRecord:
        """Read a run from a store: header, stored snapshot and full log."""
        header = await store.get_run(tenant_id, run_id)
        snapshot = await store.get_snapshot(tenant_id, run_id)
        if header is None or snapshot is None:
            raise LookupError(f"run {run_id!r} of tenant {tenant_id!r} is not in the store")
        events = await store.fetch_events(tenant_id, run_id)
        return cls.of(label, header, snapshot, events)


@dataclass(frozen=True)
class Difference:
    """One reason two runs are not equivalent."""

    kind: str  # error | checksum | events | order | dag
    message: str
    side: str | None = None
    stream: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as printed by ``dvt parity --json``."""
        data: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.side is not None:
            data["side"] = self.side
        if self.stream is not None:
            data["stream"] = self.stream
        return data


@dataclass
class ParityReport:
    """The verdict of one comparison, with every difference and a unified diff."""

    labels: tuple[str, str]
    checksums: dict[str, str | None]
    differences: list[Difference] = field(default_factory=list)
    diff: str = ""

    @property
    def equal(self) -> bool:
        """True when the two runs are equivalent."""
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        """``{"equal", "checksums", "differences", "diff"}`` (contract §13)."""
        return {
            "equal": self.equal,
            "checksums": dict(self.checksums),
            "differences": [d.to_dict() for d in self.differences],
            "diff": self.diff,
        }

    def summary(self) -> str:
        """A readable account for people (and for assertion messages)."""
        a, b = self.labels
        if self.equal:
            return f"{a} and {b} are equivalent (checksum {self.checksums[a]})"
        lines = [f"{a} and {b} differ:"]
        lines.extend(f"  - [{d.kind}] {d.message}" for d in self.differences)
        if self.diff:
            lines.append(self.diff)
        return "\n".join(lines)


def dag_violations(
    events: Sequence[NormalizedEvent],
    dependencies: Mapping[str, Sequence[str]],
    needed: Mapping[str, int] | None = None,
) -> list[str]:
    """StepStarted events that came before a dependency was satisfied, in log order.

    ``needed`` gives the steps whose join (plan v1.3 any/quorum) needs fewer than all of
    their dependencies: such a step may start once that many are settled.
    """
    satisfied: set[str] = set()
    problems: list[str] = []
    for index, event in enumerate(events):
        step = event.step_id
        if step is None:
            continue
        if event.event_type in ("StepCompleted", "StepSkipped"):
            satisfied.add(step)
        elif event.event_type == "StepStarted":
            deps = dependencies.get(step, ())
            missing = [d for d in deps if d not in satisfied]
            if needed is not None and step in needed:
                missing = missing if len(deps) - len(missing) < needed[step] else []
            if missing:
                problems.append(
                    f"event {index + 1}: {step} attempt {event.logical_attempt_id} started before "
                    f"{', '.join(missing)} completed or was skipped"
                )
    return problems


def streams(events: Sequence[NormalizedEvent]) -> dict[str, list[NormalizedEvent]]:
    """The log split into the run-level stream and one stream per step, each in log order."""
    split: dict[str, list[NormalizedEvent]] = {}
    for event in events:
        split.setdefault(event.stream, []).append(event)
    return split


def compare_event_logs(
    a: Sequence[NormalizedEvent],
    b: Sequence[NormalizedEvent],
    labels: tuple[str, str] = ("a", "b"),
) -> list[Difference]:
    """Multiset and per-stream order differences between two normalized logs."""
    la, lb = labels
    differences: list[Difference] = []
    count_a, count_b = Counter(a), Counter(b)
    only_a = sorted((count_a - count_b).elements())
    only_b = sorted((count_b - count_a).elements())
    for event in only_a:
        differences.append(Difference("events", f"only in {la}: {event.line()}", side=la))
    for event in only_b:
        differences.append(Difference("events", f"only in {lb}: {event.line()}", side=lb))
    if only_a or only_b:
        return differences
    sa, sb = streams(a), streams(b)
    for name in sorted(set(sa) | set(sb)):
        if sa.get(name, []) != sb.get(name, []):
            differences.append(
                Difference(
                    "order",
                    f"events of {'the run' if name == RUN_STREAM else name} come in a different "
                    f"order: {la}: {[e.event_type for e in sa.get(name, [])]}, "
                    f"{lb}: {[e.event_type for e in sb.get(name, [])]}",
                    stream=name,
                )
            )
    return differences


def unified_diff(
    a: Sequence[NormalizedEvent],
    b: Sequence[NormalizedEvent],
    labels: tuple[str, str],
    parity_a: Mapping[str, Any] | None = None,
    parity_b: Mapping[str, Any] | None = None,
) -> str:
    """A readable diff: per-stream event lines, then the parity forms when they differ."""
    la, lb = labels
    # Streams are listed one after the other, so interleaving of parallel steps (which may
    # legitimately differ) does not drown the real differences.
    lines_a = _stream_lines(a)
    lines_b = _stream_lines(b)
    out = list(difflib.unified_diff(lines_a, lines_b, f"{la} events", f"{lb} events", lineterm=""))
    if parity_a is not None and parity_b is not None and parity_a != parity_b:
        pa = json.dumps(parity_a, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
        pb = json.dumps(parity_b, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
        out.extend(difflib.unified_diff(pa, pb, f"{la} snapshot", f"{lb} snapshot", lineterm=""))
    return "\n".join(out)


def _stream_lines(events: Sequence[NormalizedEvent]) -> list[str]:
    lines: list[str] = []
    split = streams(events)
    for name in sorted(split):
        lines.append(f"== {name}")
        lines.extend(e.line() for e in split[name])
    return lines


def distinct_labels(a: str, b: str) -> tuple[str, str]:
    """Two labels that differ, so a report can name each side (reference vs reference)."""
    return (a, b) if a != b else (f"{a}#1", f"{b}#2")


def compare_runs(a: RunRecord, b: RunRecord) -> ParityReport:
    """Compare two recorded runs exactly as contract §10 says."""
    labels = distinct_labels(a.label, b.label)
    la, lb = labels
    report = ParityReport(labels=labels, checksums={la: a.checksum, lb: b.checksum})
    if a.checksum != b.checksum:
        report.differences.append(
            Difference("checksum", f"snapshot checksums differ: {la} {a.checksum}, "
                                   f"{lb} {b.checksum}")
        )
    report.differences.extend(compare_event_logs(a.events, b.events, labels))
    for label, record in ((la, a), (lb, b)):
        for problem in dag_violations(record.events, record.dependencies, record.needed):
            report.differences.append(Difference("dag", problem, side=label))
    if report.differences:
        report.diff = unified_diff(
            a.events, b.events, labels, parity_form(a.snapshot), parity_form(b.snapshot)
        )
    return report
