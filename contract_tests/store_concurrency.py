"""The tenant stream under concurrency: every committed event reaches every follower once, in order.

Modelled on eventsourcing's non-interleaving notification-id test, at a larger scale: writers
race as tasks on two store instances (and, where the store's hooks allow, in other processes),
one transaction stays open while everybody else commits, followers start mid-stream and are
restarted from their cursor, and the store's connections are killed half-way. At the end the
whole tenant log is read once from the start (the reference order) and every follower must
have received exactly a contiguous slice of it: nothing missing, nothing twice, same order.
No sleeps: every wait is on a condition the writers or followers signal.

A store's test module subclasses ``StoreConcurrencySuite`` and provides ``store``,
``store_factory`` and ``concurrency_hooks`` (a ``ConcurrencyHooks``). ``DVT_STRESS_SIZE``
scales the workload (``nox -s stress``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from contract_tests.store_helpers import (
    StoreFactory,
    StoreSuiteBase,
    TenantCollector,
    new_id,
)
from dvt_engine.eventlog import EventFactory
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunHeader
from dvt_engine.ports import TENANT_LOG_START, RunStateStore, TenantEvent

SIZE = max(1, int(os.environ.get("DVT_STRESS_SIZE", "1")))
WAIT_S = 60.0 + 10.0 * SIZE  # an upper bound for the whole workload, never a pause


def append_in_process(url: str, batches: list[list[str]]) -> int:
    """Append JSON-encoded event batches through a store opened in this (child) process."""
    # Imported here: a spawned child imports this module before it has a store to open.
    from dvt_engine.plugins import open_store

    async def write() -> int:
        store = await open_store(url)
        try:
            for batch in batches:
                await store.append_batch([Event.model_validate_json(e) for e in batch])
        finally:
            await store.close()
        return sum(len(b) for b in batches)

    return asyncio.run(write())


class ConcurrencyHooks:
    """What a store lends the suite; these defaults suit a store living in one process."""

    store_name = "memory"

    @contextlib.asynccontextmanager
    async def held_open(self, store: RunStateStore, events: Sequence[Event]) -> AsyncIterator[None]:
        """Write ``events`` in a transaction that stays open for the block and commits at its end.

        A store without transactions commits them at the end of the block.
        """
        yield
        await store.append_batch(events)

    async def disrupt(self) -> int:
        """Kill the store's database connections (the held one excepted); how many died."""
        return 0

    async def diagnose(self, tenant_id: str, got: list[TenantEvent]) -> str:
        """What the store can say about a stream that fell short, for a failure message."""
        return ""

    async def write_elsewhere(self, store: RunStateStore, batches: list[list[Event]]) -> None:
        """Append ``batches`` from another process where the store allows it."""
        for batch in batches:
            await store.append_batch(batch)


@dataclass
class StreamReport:
    """What the big test measured, for the stress session's record."""

    events: int
    followers: int
    seconds: float
    missing: int
    duplicated: int
    disrupted: int

    def line(self, store: str) -> str:
        """One line for the log and docs/postgres.md."""
        return (
            f"stress[{store}]: events={self.events} followers={self.followers}"
            f" seconds={self.seconds:.1f} missing={self.missing} duplicated={self.duplicated}"
            f" killed_connections={self.disrupted}"
        )


def _step_events(header: RunHeader) -> list[Event]:
    factory = EventFactory(header, emitted_by="step-runner")
    return [factory.step_event("StepStarted", s.step_id, {"kind": "noop"}) for s in header.steps]


def _batches(events: list[Event], rng: random.Random) -> list[list[Event]]:
    """Cut a writer's share into single appends and small batches (which may span runs)."""
    out: list[list[Event]] = []
    i = 0
    while i < len(events):
        size = rng.choice((1, 1, 2, 3, 5))
        out.append(events[i : i + size])
        i += size
    return out


class _Progress:
    """How many events the writers have had acknowledged; tests wait on thresholds."""

    def __init__(self) -> None:
        self.acked = 0
        self.error: BaseException | None = None
        self._changed = asyncio.Condition()

    async def add(self, n: int) -> None:
        async with self._changed:
            self.acked += n
            self._changed.notify_all()

    async def fail(self, error: BaseException) -> None:
        async with self._changed:
            self.error = error
            self._changed.notify_all()

    async def reached(self, n: int) -> None:
        async with self._changed, asyncio.timeout(WAIT_S):
            await self._changed.wait_for(lambda: self.acked >= n or self.error is not None)
        if self.error is not None:
            raise AssertionError("a writer failed") from self.error


def _assert_slice(log: list[TenantEvent], got: list[TenantEvent], after: int) -> None:
    """``got`` is exactly ``log`` after index ``after - 1``: same events, same cursors."""
    assert [i.cursor for i in got] == [i.cursor for i in log[after:]]
    assert [i.event.event_id for i in got] == [i.event.event_id for i in log[after:]]


class StoreConcurrencySuite(StoreSuiteBase):
    """The tenant stream's guarantees under racing writers. Not collected itself: subclass it."""

    async def test_every_committed_event_reaches_every_follower_once_in_commit_order(
        self,
        store: RunStateStore,
        store_factory: StoreFactory,
        concurrency_hooks: ConcurrencyHooks,
    ) -> None:
        hooks = concurrency_hooks
        rng = random.Random(20261205)
        tenant = new_id("tenant")
        runs_n, per_run, writers_n = 4 * SIZE, 30, 6
        headers = [
            await self.registered(store, tenant_id=tenant, steps=[f"s{i}" for i in range(per_run)])
            for _ in range(runs_n)
        ]
        held_run = await self.registered(store, tenant_id=tenant, steps=["h0", "h1", "h2"])
        elsewhere_run = await self.registered(
            store, tenant_id=tenant, steps=[f"p{i}" for i in range(20 * SIZE)]
        )
        noise = await self.registered(store)  # another tenant writing at the same time
        other = await store_factory()

        work = [e for h in headers for e in _step_events(h)]
        rng.shuffle(work)
        shares = [work[i::writers_n] for i in range(writers_n)]
        held_events = _step_events(held_run)
        elsewhere = _batches(_step_events(elsewhere_run), rng)
        total = len(work) + len(held_events) + sum(len(b) for b in elsewhere)
        progress = _Progress()
        transactions: list[list[Event]] = [list(held_events), *elsewhere]
        holding, release = asyncio.Event(), asyncio.Event()

        async def writer(i: int) -> None:
            target = store if i % 2 else other
            try:
                for batch in _batches(shares[i], rng):
                    transactions.append(batch)
                    if len(batch) == 1:
                        await target.append(batch[0])
                    else:
                        await target.append_batch(batch)
                    await progress.add(len(batch))
            except BaseException as exc:
                await progress.fail(exc)
                raise

        async def holder() -> None:
            # Opened a third of the way in, committed after every other writer finished.
            await progress.reached(len(work) // 3)
            async with hooks.held_open(store, held_events):
                holding.set()
                await release.wait()

        async def noise_writer() -> None:
            for event in _step_events(noise):
                await other.append(event)

        started = time.monotonic()
        from_start = TenantCollector(store.follow_tenant(tenant, after=TENANT_LOG_START))
        from_now = TenantCollector(store.follow_tenant(tenant))
        restarted_first = TenantCollector(store.follow_tenant(tenant, after=TENANT_LOG_START))
        late: list[TenantCollector] = []
        from_cursor: list[tuple[TenantCollector, str]] = []
        restarted_second: TenantCollector | None = None
        reference: TenantCollector | None = None
        disrupted = 0
        hold = asyncio.create_task(holder())
        try:
            tasks = [asyncio.create_task(writer(i)) for i in range(writers_n)]
            tasks.append(asyncio.create_task(noise_writer()))
            tasks.append(asyncio.create_task(hooks.write_elsewhere(other, elsewhere)))
            await progress.reached(len(work) // 4)
            assert await from_start.wait_for(1, timeout=WAIT_S)
            cursor = from_start.cursor
            assert cursor is not None
            from_cursor.append((TenantCollector(store.follow_tenant(tenant, after=cursor)), cursor))
            late += [TenantCollector(store.follow_tenant(tenant)) for _ in range(1 + SIZE)]
            await asyncio.wait_for(holding.wait(), WAIT_S)
            late += [TenantCollector(store.follow_tenant(tenant)) for _ in range(1 + SIZE)]
            await progress.reached(len(work) // 2)
            await restarted_first.stop()
            restarted_second = TenantCollector(
                store.follow_tenant(tenant, after=restarted_first.cursor or TENANT_LOG_START)
            )
            disrupted = await hooks.disrupt()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
            release.set()
            await asyncio.wait_for(hold, WAIT_S)

            if not await from_start.wait_for(total, timeout=WAIT_S):
                raise AssertionError(
                    f"the follower from the start got {len(from_start.items)} of {total}; "
                    + await hooks.diagnose(tenant, from_start.items)
                )
            reference = TenantCollector(store.follow_tenant(tenant, after=TENANT_LOG_START))
            assert await reference.wait_for(total, timeout=WAIT_S), (
                f"a replay got {len(reference.items)} of {total} events; the follower from the"
                f" start got {len({i.event.event_id for i in from_start.items})} distinct"
            )
            log = reference.items
            ids = [item.event.event_id for item in log]
            starts: dict[int, int] = {}
            for follower in [from_now, *late]:
                assert await follower.wait_for(1, timeout=WAIT_S), "a follower got nothing"
                starts[id(follower)] = ids.index(follower.items[0].event.event_id)
                assert await follower.wait_for(len(log) - starts[id(follower)], timeout=WAIT_S)
            for follower, cursor in from_cursor:
                starts[id(follower)] = [item.cursor for item in log].index(cursor) + 1
                assert await follower.wait_for(len(log) - starts[id(follower)], timeout=WAIT_S)
            assert await restarted_second.wait_for(
                len(log) - len(restarted_first.items), timeout=WAIT_S
            )
        finally:
            release.set()
            hold.cancel()
            for collector in [
                from_start,
                from_now,
                restarted_first,
                *late,
                *(c for c, _ in from_cursor),
                *([restarted_second] if restarted_second else []),
                *([reference] if reference else []),
            ]:
                await collector.stop()
        seconds = time.monotonic() - started

        # The reference order holds every committed event once, this tenant's only.
        assert [item.event.tenant_id for item in log] == [tenant] * len(log)
        assert len(set(ids)) == len(ids) == total
        assert set(ids) == {e.event_id for batch in transactions for e in batch}
        assert len({item.cursor for item in log}) == len(log)
        # One run's events come in runSeq order.
        last_seq: dict[str, int] = {}
        for item in log:
            seq = item.event.run_seq or 0
            assert seq > last_seq.get(item.event.run_id, 0)
            last_seq[item.event.run_id] = seq
        # What one transaction (a batch) wrote is contiguous: commits never interleave.
        where = {event_id: n for n, event_id in enumerate(ids)}
        for batch in transactions:
            places = sorted(where[e.event_id] for e in batch)
            assert places == list(range(places[0], places[0] + len(places))), "interleaved"

        resumed = [*restarted_first.items, *restarted_second.items]
        followers = [(from_start.items, 0), (resumed, 0)]
        followers += [(f.items, starts[id(f)]) for f in [from_now, *late]]
        followers += [(f.items, starts[id(f)]) for f, _ in from_cursor]
        missing = duplicated = 0
        for got, start in followers:
            expected = set(ids[start:])
            received = [item.event.event_id for item in got]
            missing += len(expected - set(received))
            duplicated += len(received) - len(set(received))
        report = StreamReport(total, len(followers), seconds, missing, duplicated, disrupted)
        print(report.line(hooks.store_name))
        assert (missing, duplicated) == (0, 0)
        for got, start in followers:
            _assert_slice(log, got, start)

    async def test_a_transaction_held_open_holds_the_stream_back_but_is_never_skipped(
        self,
        store: RunStateStore,
        store_factory: StoreFactory,
        concurrency_hooks: ConcurrencyHooks,
    ) -> None:
        tenant = new_id("tenant")
        held_run = await self.registered(store, tenant_id=tenant, steps=["a", "b"])
        busy = await self.registered(store, tenant_id=tenant, steps=[f"s{i}" for i in range(12)])
        other = await store_factory()
        follower = TenantCollector(store.follow_tenant(tenant, after=TENANT_LOG_START))
        later = _step_events(busy)
        try:
            async with concurrency_hooks.held_open(store, _step_events(held_run)):
                for event in later:
                    await other.append(event)
            assert await follower.wait_for(2 + len(later)), "the held events were skipped"
        finally:
            await follower.stop()
        got = [e.run_id for e in follower.events]
        # The held transaction's events sit together, wherever the store placed its commit.
        first = got.index(held_run.run_id)
        assert got[first : first + 2] == [held_run.run_id] * 2
        assert [e.run_seq for e in follower.events if e.run_id == busy.run_id] == list(
            range(1, len(later) + 1)
        )
