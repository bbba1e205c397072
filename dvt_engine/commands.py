"""The commands the RunInterpreter returns; every engine carries them out in order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StartStep:
    """Run one logical attempt of a step through the step runner."""

    step_id: str
    logical_attempt_id: int


@dataclass(frozen=True)
class CancelSteps:
    """Ask running steps (and waiting gates) to stop."""

    step_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class WriteRunEvent:
    """Append a run-level event; ``discriminator`` fills the key's attempt slot."""

    event_type: str
    payload: Mapping[str, Any]
    discriminator: int | None = None
    caused_by_signal_id: str | None = None


@dataclass(frozen=True)
class WriteStepEvent:
    """Append a step event that the engine itself produces (StepSkipped)."""

    event_type: str
    step_id: str
    logical_attempt_id: int
    payload: Mapping[str, Any]
    caused_by_signal_id: str | None = None


@dataclass(frozen=True)
class ResolveGate:
    """Complete (approve) or fail (reject) a waiting gate; a custom signal completes its wait
    with ``output`` (the signal's data)."""

    step_id: str
    logical_attempt_id: int
    approve: bool
    approver: str
    comment: str | None
    signal_id: str | None
    output: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExpireGate:
    """Fail a waiting approval gate with APPROVAL_TIMEOUT."""

    step_id: str
    logical_attempt_id: int


@dataclass(frozen=True)
class StartTimer:
    """Start a durable timer; the engine calls ``timer_fired(name)`` when it fires."""

    name: str
    delay_ms: int


@dataclass(frozen=True)
class Finish:
    """Write the run's terminal event; nothing follows it."""

    event_type: str
    payload: Mapping[str, Any]


Command = (
    StartStep
    | CancelSteps
    | WriteRunEvent
    | WriteStepEvent
    | ResolveGate
    | ExpireGate
    | StartTimer
    | Finish
)


def commands_of(kind: type[Command], commands: Iterable[Command]) -> list[Any]:
    """The commands of one type, in order (a convenience for engines and tests)."""
    return [c for c in commands if isinstance(c, kind)]
