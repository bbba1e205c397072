"""The state store (contract §5), as one abstract test class every store subclasses.

A store's test module subclasses ``StoreContractSuite`` and provides two fixtures:

- ``store``: an open store on fresh or shared data (tests use unique run and tenant ids);
- ``store_factory``: an async callable opening another store over the same data, to play a
  second writer process (a store that lives in one process may return the same instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dvt_engine.errors import (
    DvtError,
    ErrorCode,
    RunNotFound,
    SchemaValidationFailed,
    UsageError,
)
from dvt_engine.eventlog import EventFactory
from dvt_engine.idempotency import run_request_key, signal_key
from dvt_engine.models.events import Event
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunHeader, RunStatus, StepOutline
from dvt_engine.ports import RunStateStore
from dvt_engine.projector import project

StoreFactory = Callable[[], Awaitable[RunStateStore]]
WAIT_S = 15.0  # upper bound for anything the suite waits on; never a pause


def new_id(prefix: str) -> str:
    """A fresh identifier."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_header(
    *,
    tenant_id: str | None = None,
    run_id: str | None = None,
    project_id: str = "proj",
    environment_id: str = "prod",
    steps: Sequence[str] = ("extract", "load", "report"),
    created_at: datetime | None = None,
    request_id: str | None = None,
    plan_version: str = "1.0.0",
) -> RunHeader:
    """A registered-run header over a linear plan of ``steps``."""
    tenant_id = tenant_id or new_id("tenant")
    run_id = run_id or new_id("run")
    request_id = request_id or new_id("req")
    outline = tuple(
        StepOutline(step_id=s, kind="noop", depends_on=(steps[i - 1],) if i else ())
        for i, s in enumerate(steps)
    )
    return RunHeader(
        tenant_id=tenant_id,
        project_id=project_id,
        environment_id=environment_id,
        run_id=run_id,
        plan_id="plan",
        plan_version=plan_version,
        plan_ref=PlanRef(
            uri="plan://sha256/" + "0" * 64,
            sha256="0" * 64,
            schema_version="v1.2",
            plan_id="plan",
            plan_version=plan_version,
        ),
        steps=outline,
        engine="reference",
        run_request_key=run_request_key(
            tenant_id, project_id, environment_id, "plan", plan_version, request_id
        ),
        run_request_id=request_id,
        created_at=created_at or datetime.now(UTC),
    )


def happy_path(header: RunHeader) -> list[Event]:
    """RunStarted, every step started and completed, RunCompleted."""
    f = EventFactory(header, emitted_by="engine")
    events = [f.run_event("RunStarted", {"engine": "reference"})]
    for outline in header.steps:
        events.append(f.step_event("StepStarted", outline.step_id, {"kind": outline.kind}))
        events.append(
            f.step_event("StepCompleted", outline.step_id, {"output": {"step": outline.step_id}})
        )
    events.append(f.run_event("RunCompleted", {"succeeded": len(header.steps)}))
    return events


def fresh_copy(event: Event) -> Event:
    """The same logical event as sent again by a retrying producer: same key, new eventId."""
    return event.model_copy(update={"event_id": str(uuid.uuid4())})


class Collector:
    """Consumes a follow() iterator in a task; tests wait on how many events arrived."""

    def __init__(self, iterator: AsyncIterator[Event]) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._consume(iterator))

    async def _consume(self, iterator: AsyncIterator[Event]) -> None:
        async for event in iterator:
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

    def matching(self, where: Callable[[Event], bool] | None = None) -> list[Event]:
        """The events received so far that satisfy ``where``."""
        return [e for e in self.events if where is None or where(e)]

    async def wait_for(
        self, count: int, timeout: float = WAIT_S, where: Callable[[Event], bool] | None = None
    ) -> bool:
        """Wait, bounded by ``timeout``, until ``count`` matching events arrived."""
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: len(self.matching(where)) >= count)
            except TimeoutError:
                return False
        return True

    async def stop(self) -> None:
        """Stop consuming."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class StoreContractSuite:
    """Contract §5 for any RunStateStore. Not collected itself: subclass it."""

    # --- helpers -----------------------------------------------------------------------
    async def registered(self, store: RunStateStore, **kwargs: Any) -> RunHeader:
        """A newly registered run."""
        header, created = await store.register_run(make_header(**kwargs))
        assert created
        return header

    # --- runs --------------------------------------------------------------------------
    async def test_register_is_idempotent_on_run_request_key(self, store: RunStateStore) -> None:
        header = make_header()
        stored, created = await store.register_run(header)
        assert created
        assert stored == header
        again = header.model_copy(update={"run_id": new_id("other-run")})
        first, created_again = await store.register_run(again)
        assert not created_again
        assert first.run_id == header.run_id
        assert await store.get_run(header.tenant_id, again.run_id) is None

    async def test_reusing_a_run_id_for_another_request_is_refused(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        other = make_header(tenant_id=header.tenant_id, run_id=header.run_id)
        with pytest.raises(UsageError):
            await store.register_run(other)
        foreign = make_header(run_id=header.run_id)
        with pytest.raises(UsageError):
            await store.register_run(foreign)

    async def test_get_run_returns_the_header_to_its_tenant_only(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        assert await store.get_run(header.tenant_id, header.run_id) == header
        assert await store.get_run(new_id("tenant"), header.run_id) is None
        assert await store.get_run(header.tenant_id, new_id("run")) is None

    # --- append ------------------------------------------------------------------------
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

    # --- read --------------------------------------------------------------------------
    async def test_fetch_after_watermark_pages_in_run_seq_order(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        events = happy_path(header)
        # Producer clocks disagree: order is runSeq order, never timestamp order.
        late_first = [
            e.model_copy(update={"emitted_at": datetime(2030, 1, 1, tzinfo=UTC) - timedelta(i)})
            for i, e in enumerate(events)
        ]
        results = await store.append_batch(late_first)
        seqs = [r.run_seq for r in results]
        for after in [0, *seqs]:
            got = await store.fetch_events(header.tenant_id, header.run_id, after_seq=after)
            assert [e.run_seq for e in got] == [s for s in seqs if s > after]
        pages: list[int] = []
        cursor = 0
        while True:
            page = await store.fetch_events(
                header.tenant_id, header.run_id, after_seq=cursor, limit=3
            )
            if not page:
                break
            assert len(page) <= 3
            pages += [e.run_seq or 0 for e in page]
            cursor = page[-1].run_seq or 0
        assert pages == seqs

    async def test_get_event_by_key_finds_signal_decisions(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        key = signal_key(header.tenant_id, header.run_id, "sig-1")
        decision = EventFactory(header, emitted_by="operator").signal_event(
            "SignalRejected",
            key,
            {
                "signalId": "sig-1",
                "signalType": "PAUSE",
                "actor": {"id": "ann", "roles": ["operator"]},
                "errorCode": "RUN_TERMINAL",
            },
        )
        await store.append(decision)
        found = await store.get_event_by_key(header.tenant_id, header.run_id, key)
        assert found is not None
        assert found.event_id == decision.event_id
        assert found.payload == decision.payload
        assert await store.get_event_by_key(new_id("tenant"), header.run_id, key) is None
        assert await store.get_event_by_key(header.tenant_id, header.run_id, "f" * 64) is None

    async def test_unknown_event_type_is_stored_and_only_advances_the_watermark(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        f = EventFactory(header, emitted_by="engine")
        await store.append(f.run_event("RunStarted", {"engine": "reference"}))
        before = await store.get_snapshot(header.tenant_id, header.run_id)
        future = f.run_event("RunTeleported", {"where": "mars"})
        result = await store.append(future)
        after = await store.get_snapshot(header.tenant_id, header.run_id)
        assert before is not None
        assert after is not None
        assert after.last_event_seq == result.run_seq
        assert after.model_copy(update={"last_event_seq": before.last_event_seq}) == before
        (stored,) = await store.fetch_events(
            header.tenant_id, header.run_id, after_seq=result.run_seq - 1
        )
        assert stored.event_type == "RunTeleported"
        assert stored.payload == {"where": "mars"}

    # --- snapshots ---------------------------------------------------------------------
    async def test_snapshot_follows_the_log_and_equals_a_rebuild(
        self, store: RunStateStore
    ) -> None:
        header = await self.registered(store)
        initial = await store.get_snapshot(header.tenant_id, header.run_id)
        assert initial is not None
        assert initial.status == RunStatus.PENDING
        assert [s.step_id for s in initial.steps] == [s.step_id for s in header.steps]
        events = happy_path(header)
        for i, event in enumerate(events, start=1):
            await store.append(event)
            stored = await store.get_snapshot(header.tenant_id, header.run_id)
            rebuilt = await store.project(header.tenant_id, header.run_id)
            assert stored is not None
            assert stored.model_dump_json() == rebuilt.model_dump_json()
            assert (
                stored.last_event_seq
                == (await store.fetch_events(header.tenant_id, header.run_id))[-1].run_seq
            )
            if i == 1:
                assert stored.status == RunStatus.RUNNING
        final = await store.get_snapshot(header.tenant_id, header.run_id)
        assert final is not None
        assert final.status == RunStatus.COMPLETED
        log = await store.fetch_events(header.tenant_id, header.run_id)
        assert final.model_dump_json() == project(header, log).model_dump_json()

    async def test_duplicates_leave_the_snapshot_unchanged(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        events = happy_path(header)
        await store.append_batch(events[:3])
        before = await store.get_snapshot(header.tenant_id, header.run_id)
        for event in events[:3]:
            assert (await store.append(fresh_copy(event))).duplicate
        assert all(r.duplicate for r in await store.append_batch(events[:3]))
        after = await store.get_snapshot(header.tenant_id, header.run_id)
        assert before is not None
        assert after is not None
        assert after.model_dump_json() == before.model_dump_json()

    async def test_unknown_runs_have_no_snapshot(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        assert await store.get_snapshot(header.tenant_id, new_id("run")) is None
        assert await store.get_snapshot(new_id("tenant"), header.run_id) is None
        with pytest.raises(RunNotFound):
            await store.project(new_id("tenant"), header.run_id)

    # --- list_runs ---------------------------------------------------------------------
    async def test_list_runs_newest_first_with_filters(self, store: RunStateStore) -> None:
        tenant = new_id("tenant")
        base = datetime(2026, 11, 1, tzinfo=UTC)
        headers = [
            await self.registered(
                store,
                tenant_id=tenant,
                created_at=base + timedelta(minutes=i),
                project_id="p1" if i % 2 else "p2",
                environment_id="dev" if i < 3 else "prod",
            )
            for i in range(6)
        ]
        await self.registered(store)  # another tenant's run
        for header in headers[:2]:
            await store.append_batch(happy_path(header))
        await store.append(happy_path(headers[2])[0])
        listed = await store.list_runs(tenant)
        assert [r.run_id for r in listed] == [h.run_id for h in reversed(headers)]
        assert {r.tenant_id for r in listed} == {tenant}
        done = await store.list_runs(tenant, status=[RunStatus.COMPLETED])
        assert [r.run_id for r in done] == [headers[1].run_id, headers[0].run_id]
        assert (
            done[0].last_event_seq
            == (await store.fetch_events(tenant, headers[1].run_id))[-1].run_seq
        )
        active = await store.list_runs(tenant, status=[RunStatus.PENDING, RunStatus.RUNNING])
        assert [r.run_id for r in active] == [h.run_id for h in reversed(headers[2:])]
        assert active[-1].status == RunStatus.RUNNING
        p1_dev = await store.list_runs(tenant, project_id="p1", environment_id="dev")
        assert [r.run_id for r in p1_dev] == [headers[1].run_id]
        assert len(await store.list_runs(tenant, limit=2)) == 2
        assert await store.list_runs(tenant, limit=0) == []
        assert await store.list_runs(new_id("tenant")) == []

    # --- follow ------------------------------------------------------------------------
    async def test_follow_a_run_delivers_history_then_new_events_in_order(
        self, store: RunStateStore, store_factory: StoreFactory
    ) -> None:
        header = await self.registered(store)
        events = happy_path(header)
        first = await store.append_batch(events[:3])
        writer = await store_factory()
        follower = Collector(
            store.follow(header.tenant_id, header.run_id, after_seq=first[0].run_seq)
        )
        try:
            for event in events[3:]:
                await writer.append(event)
            assert await follower.wait_for(len(events) - 1), "events were not delivered"
        finally:
            await follower.stop()
        got = follower.events
        assert [e.event_id for e in got] == [e.event_id for e in events[1:]]
        assert [e.run_seq for e in got] == sorted(e.run_seq or 0 for e in got)

    async def test_follow_a_tenant_sees_its_runs_only(
        self, store: RunStateStore, store_factory: StoreFactory
    ) -> None:
        tenant = new_id("tenant")
        one = await self.registered(store, tenant_id=tenant)
        two = await self.registered(store, tenant_id=tenant)
        stranger = await self.registered(store)
        writer = await store_factory()
        f = EventFactory(one, emitted_by="engine")
        follower = Collector(store.follow(tenant))
        try:
            # The follower sees what is appended after it began: append markers until one
            # arrives, so the test does not depend on when the follower's task got going.
            for n in range(1, 60):
                await writer.append(f.run_event("RunMarker", {"n": n}, discriminator=n))
                if await follower.wait_for(1, timeout=0.5):
                    break
            assert follower.events, "the tenant follower never delivered anything"
            ours = happy_path(one)[:2] + happy_path(two)[:2]
            for event in [*happy_path(stranger)[:2], *ours]:
                await writer.append(event)
            assert await follower.wait_for(len(ours), where=_not_marker), "not delivered"
        finally:
            await follower.stop()
        got = follower.events
        rest = follower.matching(_not_marker)
        assert {e.tenant_id for e in got} == {tenant}
        assert sorted(e.event_id for e in rest) == sorted(e.event_id for e in ours)
        for run_id in (one.run_id, two.run_id):
            seqs = [e.run_seq for e in rest if e.run_id == run_id]
            assert seqs == sorted(seqs)

    # --- plan registry -----------------------------------------------------------------
    async def test_plan_registry_is_content_addressed(self, store: RunStateStore) -> None:
        data = ('{"metadata": {"planId": "p"}, "note": "' + uuid.uuid4().hex + '"}').encode()
        uri = await store.put_plan(data)
        assert uri.startswith("plan://sha256/")
        digest = uri.removeprefix("plan://sha256/")
        assert await store.put_plan(data) == uri
        assert await store.get_plan(digest) == data
        assert await store.put_plan(data + b" ") != uri
        assert await store.get_plan("0" * 64) is None
        assert await store.get_plan("not-a-digest") is None

    # --- isolation and hostile input ---------------------------------------------------
    async def test_reads_never_cross_tenants(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        await store.append_batch(happy_path(header))
        thief = new_id("tenant")
        assert await store.fetch_events(thief, header.run_id) == []
        assert await store.get_snapshot(thief, header.run_id) is None
        assert await store.get_run(thief, header.run_id) is None
        key = happy_path(header)[0].idempotency_key
        assert await store.get_event_by_key(thief, header.run_id, key) is None

    async def test_hostile_identifiers_and_payloads_are_stored_exactly(
        self, store: RunStateStore
    ) -> None:
        hostile = "t'; DROP TABLE dvt_events; --\"\\ ünïcødé 🚀 $1 %s {}"
        header = await self.registered(
            store,
            tenant_id=hostile[:190] + uuid.uuid4().hex[:8],
            steps=["step ' \" \\ 🚀"],
            run_id="run '\"\\🚀" + uuid.uuid4().hex[:8],
        )
        f = EventFactory(header, emitted_by="engine")
        payload_text = hostile * 1000
        events = [
            f.run_event("RunStarted", {"engine": "reference"}),
            f.step_event("StepStarted", header.steps[0].step_id, {"kind": "noop"}),
            f.step_event(
                "StepCompleted",
                header.steps[0].step_id,
                {
                    "output": {
                        "text": payload_text,
                        "n": 1e300,
                        "small": 5e-324,
                        "neg": -0.0,
                        "list": [None, True, "\u2028\ud7ff"],
                    }
                },
            ),
        ]
        await store.append_batch(events)
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        assert [e.payload for e in stored] == [e.payload for e in events]
        assert stored[2].payload["output"]["text"] == payload_text
        snapshot = await store.get_snapshot(header.tenant_id, header.run_id)
        assert snapshot is not None
        assert snapshot.steps[0].output == events[2].payload["output"]

    async def test_impossible_identifiers_are_answered_without_store_errors(
        self, store: RunStateStore
    ) -> None:
        for bad in ["nul\x00byte", "x" * 5000, "", "pipe|char", "\ud800"]:
            assert await store.fetch_events(bad, bad) == []
            assert await store.get_snapshot(bad, bad) is None
            assert await store.get_run(bad, bad) is None
            assert await store.list_runs(bad) == []
            assert await store.get_event_by_key(bad, bad, bad) is None
            with pytest.raises(DvtError) as caught:
                await store.project(bad, bad)
            assert caught.value.code in (ErrorCode.RUN_NOT_FOUND, ErrorCode.IDENTIFIER_INVALID)

    async def test_oversized_payload_is_refused_with_a_code(self, store: RunStateStore) -> None:
        header = await self.registered(store)
        f = EventFactory(header, emitted_by="engine")
        huge = f.run_event("RunStarted", {"engine": "reference", "blob": "x" * (1024 * 1024)})
        with pytest.raises(SchemaValidationFailed):
            await store.append(huge)
        assert await store.fetch_events(header.tenant_id, header.run_id) == []

    # --- conditional append (the signal service's optimistic concurrency) ---------------
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
        assert done.run_seq == 2
        assert not done.duplicate
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
        assert len(winners) == 1
        assert winners[0].run_seq == 2
        stored = await store.fetch_events(header.tenant_id, header.run_id)
        assert len(stored) == 2
        assert stored[1].event_id == winners[0].event_id


def _not_marker(event: Event) -> bool:
    return event.event_type != "RunMarker"
