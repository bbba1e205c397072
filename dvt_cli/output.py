"""Printing for people and for scripts: JSON shapes of contract §13, coded errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import click

from dvt_engine.checksum import snapshot_checksum
from dvt_engine.errors import DvtError
from dvt_engine.models.events import Event
from dvt_engine.models.snapshot import RunSnapshot

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_REFUSED = 2
EXIT_INTERNAL = 3


def dumps(value: Any) -> str:
    """One line of JSON (UTF-8 characters kept, no trailing spaces)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def emit_json(value: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(dumps(value))


def notice(message: str) -> None:
    """A one-line remark for people, on stderr so it never mixes with JSON output."""
    click.echo(message, err=True)


def hint_of(error: DvtError) -> str:
    """The hint for an error: the instance's own (details.hint) wins over the class's."""
    own = error.details.get("hint") if isinstance(error.details, Mapping) else None
    return str(own or getattr(type(error), "hint", "") or "")


def error_document(error: DvtError) -> dict[str, Any]:
    """``{"error": {code, message, details}}``; details carry ``retryable`` and the hint."""
    details = dict(error.details)
    details.setdefault("retryable", error.retryable)
    hint = hint_of(error)
    if hint:
        details.setdefault("hint", hint)
    return {"error": {"code": str(error.code), "message": error.message, "details": details}}


def print_error(error: DvtError, *, as_json: bool) -> None:
    """Show a coded error: JSON on stdout under --json, else code, message and hint on stderr."""
    if as_json:
        emit_json(error_document(error))
        return
    click.echo(f"error {error.code}: {error.message}", err=True)
    hint = hint_of(error)
    if hint:
        click.echo(f"hint: {hint}", err=True)


def run_document(snapshot: RunSnapshot) -> dict[str, Any]:
    """``{"runId", "status", "snapshot", "snapshotChecksum"}`` (contract §13)."""
    return {
        "runId": snapshot.run_id,
        "status": str(snapshot.status),
        "snapshot": snapshot.model_dump(mode="json"),
        "snapshotChecksum": snapshot_checksum(snapshot),
    }


def event_document(event: Event) -> dict[str, Any]:
    """An event as JSON data (camelCase envelope)."""
    return event.model_dump(mode="json", exclude_none=True)


def _short(value: Any, limit: int = 80) -> str:
    text = dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_event(event: Event) -> str:
    """One line for people about one event."""
    p = event.payload
    where = f"{event.step_id}" if event.step_id else "run"
    attempt = ""
    if event.step_id and event.logical_attempt_id > 1:
        attempt = f" #{event.logical_attempt_id}"
    extra = ""
    et = event.event_type
    if et == "StepCompleted" and p.get("output") is not None:
        extra = f" output={_short(p.get('output'))}"
    elif et == "StepFailed":
        err = p.get("error") or {}
        extra = f" {err.get('code')}: {err.get('message')}"
    elif et == "StepSkipped":
        extra = f" ({p.get('reason')})"
    elif et == "StepAwaitingApproval":
        extra = f" (approve with: dvt signal {event.run_id} approve {event.step_id})"
    elif et in ("SignalAccepted", "SignalRejected"):
        actor = (p.get("actor") or {}).get("id")
        extra = f" {p.get('signalType')} by {actor}"
        if p.get("errorCode"):
            extra += f" ({p.get('errorCode')})"
    elif et == "RunFailed":
        extra = f" {p.get('stepId') or ''} {p.get('code')}: {p.get('message')}"
    elif et in ("RunPaused", "RunCancelled") and p.get("reason"):
        extra = f" ({p.get('reason')})"
    return f"[{event.run_seq:>4}] {where}{attempt}: {et}{extra}"


def print_snapshot(snapshot: RunSnapshot) -> None:
    """A run's snapshot as a small table for people."""
    status = str(snapshot.status)
    if snapshot.substatus:
        status += f" ({snapshot.substatus})"
    click.echo(f"run {snapshot.run_id}  plan {snapshot.plan_id}@{snapshot.plan_version}  {status}")
    if snapshot.duration_ms is not None:
        click.echo(f"duration {snapshot.duration_ms} ms")
    width = max([len(s.step_id) for s in snapshot.steps] + [4])
    for step in snapshot.steps:
        line = f"  {step.step_id:<{width}}  {step.status!s:<8}"
        if step.substatus:
            line += f" {step.substatus}"
        if step.logical_attempt_id > 1:
            line += f" attempt {step.logical_attempt_id}"
        if step.error is not None:
            line += f" {step.error.code}: {step.error.message}"
        if step.skip_reason:
            line += f" ({step.skip_reason})"
        click.echo(line.rstrip())
    if snapshot.failure is not None:
        f = snapshot.failure
        click.echo(f"failure: {f.step_id or 'run'} {f.code}: {f.message}")
    click.echo(f"checksum {snapshot_checksum(snapshot)}")


def flush() -> None:
    """Flush stdout so followers of a pipe see lines as they happen."""
    sys.stdout.flush()
