"""The load itself: start runs at a fixed rate through the host API, watch them end, inject
faults, send PAUSE storms, and collect the numbers the report prints.

Runs are started open-loop (a start is due every 1/rate seconds whatever the system does; a
bounded number may be in flight, the rest queue and count as late). Completions come from one
tenant stream (`store.follow_tenant`), so measuring costs one connection however many runs
there are; store lag is the time between an event's persistedAt and its arrival here.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil

from benchmarks.load.options import LoadOptions
from benchmarks.load.servers import Servers, applicable
from benchmarks.load.verify import SentSignal
from dvt_engine import Client, PlanBuilder, PostgresStoreSettings
from dvt_engine.errors import DvtError
from dvt_engine.models.events import TERMINAL_RUN_EVENTS
from dvt_engine.models.signals import PausePayload, ResumePayload
from dvt_engine.ports import TENANT_LOG_START, TenantCursor
from dvt_engine.settings import (
    ConductorSettings,
    EngineSettings,
    ReferenceSettings,
    TemporalSettings,
)
from dvt_engine.waiting import settles_within

#: Seconds between memory samples.
SAMPLE_EVERY_S = 5.0
#: How long a start is retried through an outage before the run is given up.
START_RETRY_S = 120.0
#: How long a paused run stays paused before its RESUME.
PAUSED_FOR_S = 0.3
#: PAUSE/RESUME pairs in flight at most; a storm tick finding this many is skipped (counted).
MAX_SIGNALS_IN_FLIGHT = 200


@dataclass
class ChaosRecord:
    """One fault: when, how long the fault itself took, and how the runs recovered."""

    kind: str
    at_s: float
    took_s: float = 0.0
    in_flight: int = 0
    #: From the fault to the first completion of a run started after it.
    first_new_completion_s: float | None = None
    #: From the fault to the end of the last run that was in flight when it hit.
    in_flight_done_s: float | None = None
    error: str | None = None


@dataclass
class LoadState:
    """Everything measured while the load runs."""

    began: float = field(default_factory=time.monotonic)
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    lags_s: list[float] = field(default_factory=list)
    start_errors: int = 0
    late_starts: int = 0
    rss: list[tuple[float, int, int]] = field(default_factory=list)
    #: CPU seconds each part of the run spent during the load phase, and the last reading
    #: per process (a process first seen after the load began counts from its start).
    cpu_spent: dict[str, float] = field(default_factory=dict)
    cpu_seen: dict[tuple[str, int], float] = field(default_factory=dict)
    #: The same CPU seconds by minute of the load (index 0 is the first minute), to tell which
    #: part's cost per run moves when latency does.
    cpu_by_minute: dict[int, dict[str, float]] = field(default_factory=dict)

    def count_cpu(self, reading: dict[tuple[str, int], float], *, first: bool = False) -> None:
        """Add what each process used since the last reading (restarted processes included)."""
        minute = self.cpu_by_minute.setdefault(int(max(0.0, self.now()) // 60), {})
        for (part, pid), seconds in reading.items():
            before = self.cpu_seen.get((part, pid), seconds if first else 0.0)
            used = max(0.0, seconds - before)
            self.cpu_spent[part] = self.cpu_spent.get(part, 0.0) + used
            minute[part] = minute.get(part, 0.0) + used
            self.cpu_seen[part, pid] = seconds
    chaos: list[ChaosRecord] = field(default_factory=list)
    skipped_chaos: list[str] = field(default_factory=list)
    signals: dict[str, list[SentSignal]] = field(default_factory=dict)
    signal_errors: int = 0
    signals_skipped: int = 0
    stream_restarts: int = 0
    #: Per run, wall-clock marks of where its time went (see `phases`): the start call and its
    #: return as seen here, the persistedAt of its RunStarted, first StepStarted and end, and
    #: when the end arrived here. Wall clocks, because persistedAt is the database's.
    marks: dict[str, dict[str, float]] = field(default_factory=dict)
    load_end_s: float = 0.0
    watchers: list[asyncio.Task[None]] = field(default_factory=list)
    #: Notified whenever a run is seen ending.
    ends: asyncio.Condition = field(default_factory=asyncio.Condition)
    drained: bool = False

    def now(self) -> float:
        """Seconds since the load began."""
        return time.monotonic() - self.began

    def running(self) -> list[str]:
        """Runs started and not yet seen ending."""
        return [r for r in self.started if r not in self.ended]


def engine_settings(options: LoadOptions, servers: Servers) -> EngineSettings:
    """The driver's engine settings: a client only when workers run in their own process."""
    if options.engine == "temporal":
        return TemporalSettings(address=servers.temporal_address, task_queue=servers.task_queue,
                                worker=False, signal_rate_limit_per_minute=None)
    if options.engine == "conductor":
        return ConductorSettings(url=servers.conductor_url, worker=False,
                                 signal_rate_limit_per_minute=None)
    return ReferenceSettings(signal_rate_limit_per_minute=None)


def load_plan(steps: int, step_ms: int) -> dict[str, Any]:
    """A chain of ``steps`` steps: noop, or sleep ``step_ms`` each."""
    builder = PlanBuilder("load", "1")
    previous: list[str] = []
    for i in range(steps):
        name = f"s{i + 1}"
        if step_ms:
            builder.step(name, "sleep", params={"ms": step_ms}, depends_on=previous)
        else:
            builder.step(name, "noop", depends_on=previous)
        previous = [name]
    return builder.build()


async def _watch(client: Client, state: LoadState, stop: asyncio.Event) -> None:
    """Record every run's end (and the store lag) from the tenant stream, across outages."""
    # The tenant is new: from its first event, so no run can end before the watch begins.
    cursor: TenantCursor = TENANT_LOG_START
    while not stop.is_set():
        try:
            async for item in client.store.follow_tenant(client.tenant, after=cursor):
                cursor = item.cursor
                event = item.event
                if event.persisted_at is not None:
                    arrived = datetime.now(UTC)
                    state.lags_s.append((arrived - event.persisted_at).total_seconds())
                    note_mark(state, event.run_id, str(event.event_type),
                          event.persisted_at.timestamp(), arrived.timestamp())
                if event.event_type in TERMINAL_RUN_EVENTS and event.run_id not in state.ended:
                    state.ended[event.run_id] = state.now()
                    state.status[event.run_id] = event.event_type
                    async with state.ends:
                        state.ends.notify_all()
        except DvtError:
            # The store gave up during an outage: start following again where we were.
            state.stream_restarts += 1
            await asyncio.sleep(0.5)  # back-off before following again


#: The events whose first persistedAt marks a phase of a run.
_MARKED = {"RunStarted": "runStarted", "StepStarted": "stepStarted"}


def note_mark(state: LoadState, run_id: str, event_type: str, persisted: float,
          arrived: float) -> None:
    """Note the first persistedAt of the events that bound a run's phases."""
    marks = state.marks.get(run_id)
    if marks is None:
        return  # not a run this driver started (or its start is not recorded yet)
    name = _MARKED.get(event_type)
    if name is not None:
        marks.setdefault(name, persisted)
    elif event_type in TERMINAL_RUN_EVENTS:
        marks.setdefault("ended", persisted)
        marks.setdefault("seen", arrived)


async def _start_one(client: Client, ref: Any, run_id: str, state: LoadState,
                     gate: asyncio.Semaphore) -> None:
    async with gate:
        state.started[run_id] = state.now()
        state.marks[run_id] = {"call": time.time()}
        while True:
            try:
                await client.start_run(ref, run_id=run_id)
                state.marks[run_id].setdefault("returned", time.time())
                return
            except DvtError:
                # Starting is idempotent on the run id: a retry after an outage finds the run.
                # One that never starts stays "not ended" and fails the check after the drain.
                state.start_errors += 1
                if state.now() - state.started[run_id] > START_RETRY_S:
                    return
                await asyncio.sleep(0.5)  # back-off while the store or engine comes back


#: Starts one run (its id) holding the in-flight-starts gate for the start only.
Launch = Callable[[str, asyncio.Semaphore], Coroutine[Any, Any, None]]


async def _starter(options: LoadOptions, state: LoadState, tasks: set[asyncio.Task[None]],
                   launch: Launch) -> None:
    gate = asyncio.Semaphore(options.max_in_flight_starts)
    interval = 1.0 / options.rate_per_s
    n = 0
    while True:
        due = n * interval
        if due >= options.seconds:
            return
        wait = due - state.now()
        if wait > 0:
            await asyncio.sleep(wait)  # the open-loop schedule, not a synchronisation
        elif gate.locked():
            state.late_starts += 1
        run_id = f"load-{n:07d}-{uuid.uuid4().hex[:6]}"
        task = asyncio.create_task(launch(run_id, gate))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1


async def _sampler(servers: Servers, state: LoadState, stop: asyncio.Event) -> None:
    me = psutil.Process()
    while not stop.is_set():
        state.rss.append((state.now(), me.memory_info().rss, servers.worker_rss()))
        if state.cpu_seen and not state.load_end_s:
            state.count_cpu(servers.cpu_by_process())
        await settles_within(stop.wait(), SAMPLE_EVERY_S)


async def _chaos(servers: Servers, options: LoadOptions, state: LoadState) -> None:
    kinds, skipped = applicable(options.engine, list(options.chaos))
    state.skipped_chaos = skipped
    for i, kind in enumerate(kinds):
        at = options.seconds * (i + 1) / (len(kinds) + 1)
        await asyncio.sleep(max(0.0, at - state.now()))  # the fault's place in the schedule
        record = ChaosRecord(kind=kind, at_s=state.now())
        in_flight = state.running()
        record.in_flight = len(in_flight)
        state.chaos.append(record)
        try:
            record.took_s = await asyncio.to_thread(servers.inject, kind)
        except Exception as exc:  # a fault that could not be done is reported, not hidden
            record.error = f"{type(exc).__name__}: {exc}"
            continue
        state.watchers.append(asyncio.create_task(_recovery(record, set(in_flight), state)))


async def _recovery(record: ChaosRecord, in_flight: set[str], state: LoadState) -> None:
    """Fill the record's recovery times from the completions as they come."""
    while record.first_new_completion_s is None or record.in_flight_done_s is None:
        if record.first_new_completion_s is None:
            new = [state.ended[r] for r, t in list(state.started.items())
                   if t > record.at_s and r in state.ended]
            if new:
                record.first_new_completion_s = min(new) - record.at_s
        if record.in_flight_done_s is None and all(r in state.ended for r in in_flight):
            ends = [state.ended[r] for r in in_flight]
            record.in_flight_done_s = (max(ends) if ends else state.now()) - record.at_s
            continue
        async with state.ends:
            await state.ends.wait()


async def _storm(client: Client, options: LoadOptions, state: LoadState) -> None:
    """PAUSE signals at the asked rate on random running runs, each followed by a RESUME."""
    rng = random.Random(7)
    interval = 1.0 / options.signals_per_s
    pending: set[asyncio.Task[None]] = set()

    async def send(run_id: str) -> None:
        handle = client.get_run(run_id)
        for kind, payload in (("PAUSE", PausePayload(reason="load")), ("RESUME", None)):
            signal_id = str(uuid.uuid4())
            sent_at = state.now()
            try:
                decision = await handle.signal(payload or ResumePayload(), signal_id=signal_id)
            except DvtError:
                state.signal_errors += 1
                return
            state.signals.setdefault(run_id, []).append(SentSignal(
                run_id, signal_id, kind, decision.accepted, bool(decision.no_op), sent_at))
            if kind == "PAUSE":
                await asyncio.sleep(PAUSED_FOR_S)  # the pause's length, part of the load

    n = 0
    while state.now() < options.seconds:
        await asyncio.sleep(max(0.0, n * interval - state.now()))  # the storm's own schedule
        n += 1
        running = state.running()
        if not running:
            continue
        if len(pending) >= MAX_SIGNALS_IN_FLIGHT:
            state.signals_skipped += 1  # the engine is behind: an open loop would only queue
            continue
        task = asyncio.create_task(send(rng.choice(running)))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)


async def drive(options: LoadOptions, servers: Servers) -> tuple[LoadState, Client]:
    """Run the load phase and the drain; the state and the open client (the caller closes)."""
    client = await Client.connect(
        tenant=f"load-{uuid.uuid4().hex[:8]}", store=PostgresStoreSettings(
            url=servers.store_url, pool_max=20), engine=engine_settings(options, servers),
        actor="load", roles=("operator",))
    state = LoadState()
    stop = asyncio.Event()
    try:
        ref = await client.store_plan(load_plan(options.steps, options.step_ms))

        async def launch(run_id: str, gate: asyncio.Semaphore) -> None:
            await _start_one(client, ref, run_id, state, gate)

        watch = asyncio.create_task(_watch(client, state, stop))
        phases = [_chaos(servers, options, state)]
        if options.signals_per_s > 0:
            phases.append(_storm(client, options, state))
        await load_and_drain(options, servers, state, stop, launch, phases, [watch])
    except BaseException:
        await client.close()
        raise
    return state, client


async def load_and_drain(options: LoadOptions, servers: Servers, state: LoadState,
                         stop: asyncio.Event, launch: Launch,
                         phases: Sequence[Awaitable[None]] = (),
                         background: Sequence[asyncio.Task[None]] = ()) -> None:
    """The open-loop load phase (with ``phases`` alongside), then the drain until every
    started run is seen ending or the drain time is up; ``background`` (what records the
    ends) and the samplers are stopped after."""
    tasks: set[asyncio.Task[None]] = set()
    background = [*background, asyncio.create_task(_sampler(servers, state, stop))]
    try:
        state.count_cpu(servers.cpu_by_process(), first=True)
        state.began = time.monotonic()
        await asyncio.gather(_starter(options, state, tasks, launch), *phases)
        if tasks:
            await asyncio.gather(*list(tasks))
        state.load_end_s = state.now()
        state.count_cpu(servers.cpu_by_process())
        deadline = state.now() + options.drain_s
        async with state.ends:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.ends.wait_for(lambda: not state.running()),
                                       max(0.0, deadline - state.now()))
        state.drained = not state.running()
    finally:
        stop.set()
        for task in [*background, *state.watchers]:
            task.cancel()
        for task in [*background, *state.watchers]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
