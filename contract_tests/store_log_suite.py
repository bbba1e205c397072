"""Store contract: appending, duplicates, idempotency conflicts, batches, concurrent writers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from contract_tests.store_helpers import (
    StoreFactory,
    StoreSuiteBase,
    fresh_copy,
    happy_path,
    make_header,
    new_id,
)
from dvt_engine import telemetry
from dvt_engine.errors import ErrorCode, IdempotencyConflict, RunNotFound, SchemaValidationFailed
from dvt_engine.eventlog import EventFactory
from dvt_engine.models.events import AppendResult
from dvt_engine.ports import RunStateStore


class LogContract(StoreSuiteBase):
    """append and append_batch: runSeq, exact storage, duplicates and conflicts."""

    # --- append -----------------------------------------------------------------------------
    async def test_append_assigns_increasing_run_seq_and_persisted_at(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        before = datetime.now(UTC) - timedelta(minutes=5)
        results = [await store.append(e) for e in happy_path(header)]
        seqs = [r.run_seq for r in results]
        assert seqs == sorted(set(seqs))
        assert seqs[0] >= 1
        assert not any(r.duplicate for r in results)
        for result in results:
            assert result.persisted_at.tzinfo is not None
            assert result.persisted_at > before
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        assert [e.run_seq for e in stored] == seqs
        assert [e.event_id for e in stored] == [r.event_id for r in results]
        assert [e.persisted_at for e in stored] == [r.persisted_at for r in results]

    async def test_append_keeps_the_envelope_exactly(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        event = EventFactory(header, emitted_by="engine").run_event(
            "RunStarted",
            {
                "engine": "reference",
                "engineRunRef": {"provider": "reference", "instanceId": "i", "runId": "r"},
            },
        )
        result = await store.append(event)
        (stored,) = await store.fetch_events(header.tenant_id, header.run_id)
        assert stored.model_dump(exclude={"run_seq", "persisted_at"}) == event.model_dump(
            exclude={"run_seq", "persisted_at"}
        )
        assert (stored.run_seq, stored.persisted_at) == (result.run_seq, result.persisted_at)

    async def test_secret_looking_values_are_masked_before_they_are_stored(
        self, store: RunStateStore
    ) -> None:
        """A producer that bypasses EventFactory still cannot make the store keep a secret."""
        header = await self.registered(store)
        factory = EventFactory(header, emitted_by="engine")
        leaky = {"output": {"password": "hunter2-hunter2", "note": "Bearer abcdefghijklmnop1234",
                            "rows": 3}}
        started = factory.step_event("StepStarted", header.steps[0].step_id, {"kind": "noop"})
        # model_copy skips the factory's own masking: the raw values reach the store.
        completed = factory.step_event("StepCompleted", header.steps[0].step_id, {"output": {}})
        completed = completed.model_copy(update={"payload": leaky})
        await store.append(started)
        await store.append_batch([completed])
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        text = " ".join(e.model_dump_json() for e in stored)
        assert "hunter2-hunter2" not in text
        assert "abcdefghijklmnop1234" not in text
        assert stored[-1].payload["output"]["rows"] == 3
        # A retry of the same leaky event is the same (masked) event: a quiet duplicate.
        again = await store.append(completed)
        assert again.duplicate

    async def test_append_to_an_unregistered_run_is_run_not_found(
        self, store: RunStateStore
    ) -> None:
        header = make_header()
        with pytest.raises(RunNotFound):
            await store.append(happy_path(header)[0])

    async def test_append_by_another_tenant_is_run_not_found(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        intruder = header.model_copy(update={"tenant_id": new_id("intruder")})
        event = happy_path(intruder)[0]
        with pytest.raises(RunNotFound):
            await store.append(event)
        assert await store.fetch_events(header.tenant_id, header.run_id) == []

    async def test_invalid_event_is_refused_before_anything_is_stored(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        f = EventFactory(header, emitted_by="engine")
        bad = [
            f.step_event("StepFailed", "extract", {"error": "not an object"}),
            f.run_event("RunStarted", {"engine": "reference"}).model_copy(update={"run_seq": 7}),
            f.run_event("RunStarted", {"engine": "x", "note": "nul\x00byte"}),
        ]
        for event in bad:
            with pytest.raises(SchemaValidationFailed):
                await store.append(event)
        with pytest.raises(SchemaValidationFailed):
            await store.append_batch([happy_path(header)[0], bad[0]])
        assert await store.fetch_events(header.tenant_id, header.run_id) == []

    async def test_duplicate_returns_the_existing_event_and_inserts_nothing(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        events = happy_path(header)
        first = await store.append(events[0])
        await store.append(events[1])
        again = await store.append(fresh_copy(events[0]))
        assert again.duplicate
        assert (again.run_seq, again.event_id, again.persisted_at) == (
            first.run_seq,
            first.event_id,
            first.persisted_at,
        )
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        assert len(stored) == 2
        assert stored[0].event_id == events[0].event_id

    async def test_concurrent_duplicates_insert_exactly_one_row(
        self, store: RunStateStore, store_factory: StoreFactory
    ) -> None:
        header = await self.registered(store)
        other = await store_factory()
        event = happy_path(header)[0]
        copies = [fresh_copy(event) for _ in range(24)]
        writers = [store if i % 2 else other for i in range(len(copies))]
        results = await asyncio.gather(*(w.append(c) for w, c in zip(writers, copies, strict=True)))
        assert sum(1 for r in results if not r.duplicate) == 1
        winner = next(r for r in results if not r.duplicate)
        assert {(r.run_seq, r.event_id, r.persisted_at) for r in results} == {
            (winner.run_seq, winner.event_id, winner.persisted_at)
        }
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        assert [e.event_id for e in stored] == [winner.event_id]

    async def test_concurrent_writers_to_one_run_lose_nothing(
        self, store: RunStateStore, store_factory: StoreFactory
    ) -> None:
        header = await self.registered(store, steps=[f"s{i}" for i in range(30)])
        other = await store_factory()
        f = EventFactory(header, emitted_by="step-runner")
        events = [f.step_event("StepStarted", s.step_id, {"kind": "noop"}) for s in header.steps]
        results = await asyncio.gather(
            *((store if i % 2 else other).append(e) for i, e in enumerate(events))
        )
        assert not any(r.duplicate for r in results)
        seqs = [r.run_seq for r in results]
        assert len(set(seqs)) == len(seqs)
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        assert sorted(e.event_id for e in stored) == sorted(e.event_id for e in events)
        assert [e.run_seq for e in stored] == sorted(seqs)

    async def test_concurrent_batches_with_overlapping_keys(
        self, store: RunStateStore, store_factory: StoreFactory
    ) -> None:
        headers = [await self.registered(store) for _ in range(3)]
        other = await store_factory()
        events = [e for h in headers for e in happy_path(h)]
        batch_a = events[::2] + events[1::4]
        batch_b = [fresh_copy(e) for e in events[1::2]] + [fresh_copy(e) for e in events[::3]]
        results_a, results_b = await asyncio.gather(
            store.append_batch(batch_a), other.append_batch(list(reversed(batch_b)))
        )
        by_key: dict[tuple[str, str], set[tuple[int, str]]] = {}
        for event, result in zip(
            batch_a + list(reversed(batch_b)), results_a + results_b, strict=True
        ):
            by_key.setdefault((event.run_id, event.idempotency_key), set()).add(
                (result.run_seq, result.event_id)
            )
        assert all(len(answers) == 1 for answers in by_key.values())
        for header in headers:
            stored = await store.fetch_events(header.tenant_id, header.run_id)
            keys = [e.idempotency_key for e in stored]
            assert len(keys) == len(set(keys)) == len(happy_path(header))

    async def test_batch_results_follow_input_order(self, store: RunStateStore) -> None:
        one, two = await self.registered(store), await self.registered(store)
        a, b = happy_path(one), happy_path(two)
        await store.append(a[0])
        batch = [a[0], b[0], a[1], fresh_copy(b[0]), b[1], a[2]]
        results = await store.append_batch(batch)
        assert [r.duplicate for r in results] == [True, False, False, True, False, False]
        assert results[3].event_id == b[0].event_id
        assert results[3].run_seq == results[1].run_seq
        assert results[2].run_seq > results[0].run_seq
        assert results[4].run_seq > results[1].run_seq
        assert results[5].run_seq > results[2].run_seq
        assert await store.append_batch([]) == []

    async def test_batch_naming_an_unknown_run_appends_nothing(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        ghost = make_header()
        with pytest.raises(RunNotFound):
            await store.append_batch([happy_path(header)[0], happy_path(ghost)[0]])
        assert await store.fetch_events(header.tenant_id, header.run_id) == []

    # --- idempotency conflicts --------------------------------------------------------------
    async def test_same_key_with_another_payload_or_type_is_a_conflict(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        events = happy_path(header)
        first = await store.append(events[1])
        await store.append(events[0])
        before = await store.fetch_events(header.tenant_id, header.run_id)
        other_payload = events[1].model_copy(
            update={"event_id": str(uuid.uuid4()), "payload": {"kind": "spark"}}
        )
        other_type = events[1].model_copy(
            update={"event_id": str(uuid.uuid4()), "event_type": "StepMarker"}
        )
        with metric_reader() as reader:
            for conflicting in (other_payload, other_type):
                with pytest.raises(IdempotencyConflict) as caught:
                    await store.append(conflicting)
                assert caught.value.code == ErrorCode.IDEMPOTENCY_CONFLICT
                assert caught.value.details["idempotencyKey"] == events[1].idempotency_key
            assert conflict_count(reader) == 2
        # An identical retry stays a quiet duplicate, also when the producer's clock moved.
        retry = fresh_copy(events[1]).model_copy(
            update={"emitted_at": events[1].emitted_at + timedelta(seconds=3)}
        )
        again = await store.append(retry)
        assert again.duplicate
        assert (again.run_seq, again.event_id) == (first.run_seq, first.event_id)
        assert await store.fetch_events(header.tenant_id, header.run_id) == before

    async def test_a_batch_with_a_conflicting_key_stores_nothing(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        events = happy_path(header)
        await store.append(events[0])
        changed = events[0].model_copy(
            update={"event_id": str(uuid.uuid4()), "payload": {"engine": "temporal"}}
        )
        with pytest.raises(IdempotencyConflict):
            await store.append_batch([events[1], events[2], changed])
        twice = events[3].model_copy(
            update={"event_id": str(uuid.uuid4()), "payload": {"kind": "other"}}
        )
        with pytest.raises(IdempotencyConflict):
            await store.append_batch([events[1], events[3], twice])
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        assert [e.event_id for e in stored] == [events[0].event_id]
        results = await store.append_batch([fresh_copy(events[0]), *events[1:4], events[3]])
        assert [r.duplicate for r in results] == [True, False, False, False, True]

    async def test_concurrent_conflicting_appends_store_one_event(
        self, store: RunStateStore, store_factory: StoreFactory
    ) -> None:
        header = await self.registered(store)
        other = await store_factory()
        event = happy_path(header)[0]
        variants = [
            event.model_copy(
                update={"event_id": str(uuid.uuid4()), "payload": {"engine": f"e{i % 3}"}}
            )
            for i in range(18)
        ]
        outcomes = await asyncio.gather(
            *((store if i % 2 else other).append(v) for i, v in enumerate(variants)),
            return_exceptions=True,
        )
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        assert len(stored) == 1
        winner = stored[0].payload
        for variant, outcome in zip(variants, outcomes, strict=True):
            if variant.payload == winner:
                assert isinstance(outcome, AppendResult), outcome
                assert outcome.run_seq == stored[0].run_seq
            else:
                assert isinstance(outcome, IdempotencyConflict), outcome

    # --- conditional append (the signal service's optimistic concurrency) ------------------
    async def test_append_if_last_appends_only_at_the_expected_run_seq(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        first, second, third = happy_path(header)[:3]
        await store.append(first)
        assert await store.append_if_last(second, 0) is None
        assert await store.append_if_last(second, 2) is None
        done = await store.append_if_last(second, 1)
        assert done is not None
        assert (done.run_seq, done.duplicate) == (2, False)
        assert await store.append_if_last(third, 1) is None
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        assert [e.event_id for e in stored] == [first.event_id, second.event_id]
        snapshot = await store.get_snapshot(header.tenant_id, header.run_id)
        assert snapshot is not None
        assert snapshot.last_event_seq == 2

    async def test_concurrent_conditional_appends_at_one_run_seq_admit_exactly_one(
        self, store: RunStateStore, store_factory: StoreFactory
    ) -> None:
        header = await self.registered(store, steps=[f"s{i}" for i in range(12)])
        other = await store_factory()
        await store.append(happy_path(header)[0])
        f = EventFactory(header, emitted_by="step-runner")
        events = [f.step_event("StepStarted", s.step_id, {"kind": "noop"}) for s in header.steps]
        results = await asyncio.gather(
            *((store if i % 2 else other).append_if_last(e, 1) for i, e in enumerate(events))
        )
        winners = [r for r in results if r is not None]
        assert [w.run_seq for w in winners] == [2]
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        assert [e.event_id for e in stored][1:] == [winners[0].event_id]


@contextlib.contextmanager
def metric_reader() -> Iterator[InMemoryMetricReader]:
    """dvt's metrics go to an in-memory reader for the duration of the block."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry.use_meter_provider(provider)
    try:
        yield reader
    finally:
        telemetry.use_meter_provider(None)
        provider.shutdown()


def conflict_count(reader: InMemoryMetricReader) -> int:
    """The idempotency-conflict counter's total as the reader sees it."""
    data = reader.get_metrics_data()
    total = 0
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == telemetry.METRIC_IDEMPOTENCY_CONFLICTS:
                    total += sum(int(point.value) for point in metric.data.data_points)
    return total
