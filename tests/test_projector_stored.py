"""The projector over stored events read back as records (what a rebuild folds) gives the
snapshot it gives over validated Event models, byte for byte."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_projector_properties import SETTINGS, log_strategy

from contract_tests.driver import execute_scenario
from contract_tests.scenarios import get_scenario
from dvt_engine.checksum import snapshot_bytes
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunHeader
from dvt_engine.projector import apply, initial_snapshot, project
from dvt_engine.stored_events import StoredEvent, header_snapshot, stored_event
from dvt_engine.stores.memory import MemoryRunStateStore


def stored(event: Event) -> StoredEvent:
    """The event as a store keeps it (the envelope without runSeq) and reads it back."""
    assert event.run_seq is not None
    return stored_event(event.model_dump_json(exclude={"run_seq", "persisted_at"}),
                        event.run_seq)


def _same(header: RunHeader, events: list[Event]) -> None:
    expected = project(header, events)
    from_records = apply(header_snapshot(header.model_dump_json()), [stored(e) for e in events])
    assert from_records.model_dump_json() == expected.model_dump_json()
    assert snapshot_bytes(from_records) == snapshot_bytes(expected)


@SETTINGS
@given(log=log_strategy, seed=st.integers(0, 2**32 - 1))
def test_records_fold_to_the_snapshot_of_models(
    log: tuple[RunHeader, list[Event]], seed: int
) -> None:
    header, events = log
    rng = random.Random(seed)
    # Producers may say when something happened, in any zone: the stored text keeps the
    # offset, and the snapshot must hold the instant the validated model holds.
    varied = [
        e.model_copy(update={"occurred_at": (e.emitted_at - timedelta(seconds=1)).astimezone(
            timezone(timedelta(hours=rng.choice([-5, 0, 2]))))})
        if rng.random() < 0.3 else e
        for e in events
    ]
    _same(header, varied)
    # Records folded in chunks into a stored snapshot give the same as one fold.
    cut = rng.randint(0, len(varied))
    first = apply(initial_snapshot(header), [stored(e) for e in varied[:cut]])
    rest = apply(first, [stored(e) for e in reversed(varied[cut:])])
    assert rest.model_dump_json() == project(header, varied).model_dump_json()


async def _log(scenario_id: str) -> tuple[RunHeader, list[Event]]:
    store = MemoryRunStateStore()
    engine = ReferenceEngine(store)
    try:
        outcome = await execute_scenario(get_scenario(scenario_id), engine, store, timeout=30.0)
    finally:
        await engine.close()
    header = await store.get_run(outcome.tenant_id, outcome.run_id)
    assert header is not None
    return header, await store.fetch_events(outcome.tenant_id, outcome.run_id)


@pytest.mark.parametrize("scenario_id", [
    "v13-foreach-fan-in", "v13-foreach-condition", "await-operator-retry", "flaky-third-attempt",
    "pause-resume-gate", "approval-rejected", "cancel-mid-run", "fan-out-fan-in",
])
def test_golden_scenario_logs_fold_the_same_from_records(scenario_id: str) -> None:
    header, events = asyncio.run(_log(scenario_id))
    assert events
    _same(header, events)


def test_header_snapshot_reads_what_initial_snapshot_copies() -> None:
    header, _ = asyncio.run(_log("fan-out-fan-in"))
    again = header.model_copy(update={"original_run_id": "run-before"})
    for h in (header, again):
        assert header_snapshot(h.model_dump_json()) == initial_snapshot(h)
        assert (header_snapshot(h.model_dump_json()).model_dump_json()
                == initial_snapshot(h).model_dump_json())


def test_a_record_takes_the_event_defaults() -> None:
    """Fields an envelope may omit default as in Event; runSeq comes from the store."""
    envelope: dict[str, Any] = {"eventType": "RunStarted", "runId": "r",
                                "emittedAt": "2026-12-05T10:00:00Z", "runSeq": 99}
    record = StoredEvent(envelope, 3)
    assert (record.run_seq, record.step_id, record.logical_attempt_id,
            record.engine_attempt_id, record.occurred_at, record.payload) == (3, None, 1, 1,
                                                                             None, {})


def test_times_parse_as_event_validation_parses_them() -> None:
    """Same instant, same zone object: a snapshot from records equals one from models."""
    header, events = asyncio.run(_log("one-step"))
    started = next(e for e in events if e.event_type == "StepStarted")
    text = started.model_dump_json(exclude={"run_seq", "persisted_at"})
    assert started.run_seq is not None
    validated = Event.model_validate_json(text).emitted_at
    snap = apply(header_snapshot(header.model_dump_json()),
                 [stored(e) for e in events if (e.run_seq or 0) <= (started.run_seq or 0)])
    step = next(s for s in snap.steps if s.step_id == started.step_id)
    assert repr(step.started_at) == repr(validated)
    assert validated.utcoffset() == timedelta(0)
