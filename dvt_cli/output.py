"""Printing for people and for scripts: JSON shapes of contract §13, coded errors.

Every line for people goes through ``say`` (or ``notice``), which renders it with ``safe``:
run ids, reasons, actor ids, step outputs and error messages come from users and plans, and a
terminal must never interpret them (an escape sequence that clears the screen, a CR or LF that
starts a forged line, a U+202E that reverses what follows). JSON output escapes the same
characters inside its strings, so it stays one line per document and prints as plain text.
"""

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


def safe(value: Any) -> str:
    """``value`` as text a terminal shows literally: every character that is not printable -
    controls (ESC, CR, LF, BEL, C1), format and bidi controls (U+202E), line separators, lone
    surrogates - becomes a visible Python-style escape such as ``\\x1b`` or ``\\u202e``."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def say(line: Any = "", *, err: bool = False) -> None:
    """Print one line for people, rendered with ``safe`` (stdout, or stderr with ``err``)."""
    click.echo(safe(line), err=err)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells characters beyond the BMP as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def dumps(value: Any) -> str:
    """One line of JSON: printable UTF-8 kept as is, every other character ``\\uXXXX``-escaped
    (json escapes only C0 controls; DEL, C1, bidi controls and lone surrogates are ours)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    if text.isprintable():
        return text
    # Outside strings a JSON document is printable ASCII, so this only touches string content.
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in text)


def emit_json(value: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(dumps(value))


def notice(message: str) -> None:
    """A one-line remark for people, on stderr so it never mixes with JSON output."""
    say(message, err=True)


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


MAX_LISTED_ERRORS = 10


def print_error(error: DvtError, *, as_json: bool) -> None:
    """Show a coded error: JSON on stdout under --json, else code, message and hint on stderr.

    For people, a list of failing paths (``details.errors``) is printed below the message, and
    a hint that points at that JSON field says where the paths are instead.
    """
    if as_json:
        emit_json(error_document(error))
        return
    say(f"error {error.code}: {error.message}", err=True)
    listed = _listed_errors(error)
    for line in listed:
        say(line, err=True)
    hint = hint_of(error)
    if hint and "details.errors" in hint:
        # That field exists only in --json output.
        hint = "the failing paths are listed above" if listed else ""
    if hint:
        say(f"hint: {hint}", err=True)


def _listed_errors(error: DvtError) -> list[str]:
    errors = error.details.get("errors") if isinstance(error.details, Mapping) else None
    if not isinstance(errors, list):
        return []
    lines = []
    for item in errors[:MAX_LISTED_ERRORS]:
        if not isinstance(item, Mapping):
            continue
        message = str(item.get("message") or "")
        path = str(item.get("path") or "")
        if message == error.message and not path.strip("/"):
            continue  # the message above already says all of it
        lines.append(f"  at {path or '/'}: {message}")
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"  ... and {len(errors) - MAX_LISTED_ERRORS} more (--json lists all)")
    return lines


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
    elif et == "StepAwaitingApproval" and p.get("signal"):
        extra = f" (send with: dvt signal {event.run_id} {p.get('signal')} --payload JSON)"
    elif et == "StepAwaitingApproval":
        extra = f" (approve with: dvt signal {event.run_id} approve {event.step_id})"
    elif et in ("SignalAccepted", "SignalRejected"):
        actor = (p.get("actor") or {}).get("id")
        name = (p.get("request") or {}).get("name") if p.get("signalType") == "CUSTOM" else None
        extra = f" {p.get('signalType')}{f' {name}' if name else ''} by {actor}"
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
    say(f"run {snapshot.run_id}  plan {snapshot.plan_id}@{snapshot.plan_version}  {status}")
    if snapshot.duration_ms is not None:
        say(f"duration {snapshot.duration_ms} ms")
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
        say(line.rstrip())
    if snapshot.failure is not None:
        f = snapshot.failure
        say(f"failure: {f.step_id or 'run'} {f.code}: {f.message}")
    say(f"checksum {snapshot_checksum(snapshot)}")


def flush() -> None:
    """Flush stdout so followers of a pipe see lines as they happen."""
    sys.stdout.flush()
