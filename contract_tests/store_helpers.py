"""What the store suites share: headers, events, and collectors that consume follow()."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from dvt_engine.eventlog import EventFactory
from dvt_engine.idempotency import run_request_key
from dvt_engine.models.events import Event
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunHeader, StepOutline
from dvt_engine.ports import RunStateStore, TenantCursor, TenantEvent
from dvt_engine.waiting import cancel_and_wait

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
        await cancel_and_wait(self._task)


class TenantCollector:
    """Consumes a follow_tenant() stream in a task, keeping every event with its cursor."""

    def __init__(self, iterator: AsyncIterator[TenantEvent]) -> None:
        self.items: list[TenantEvent] = []
        #: time.perf_counter() when each item arrived (for lag measurements).
        self.times: list[float] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._consume(iterator))

    async def _consume(self, iterator: AsyncIterator[TenantEvent]) -> None:
        try:
            async for item in iterator:
                async with self._changed:
                    self.items.append(item)
                    self.times.append(time.perf_counter())
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._changed.notify_all()

    @property
    def events(self) -> list[Event]:
        """The events received so far, in the order they arrived."""
        return [item.event for item in self.items]

    @property
    def cursor(self) -> TenantCursor | None:
        """The cursor of the last event received (None before the first)."""
        return self.items[-1].cursor if self.items else None

    async def wait_for(
        self, count: int, timeout: float = WAIT_S, where: Callable[[Event], bool] | None = None
    ) -> bool:
        """Wait, bounded by ``timeout``, until ``count`` matching events arrived.

        A stream that failed raises its error here instead of letting the wait run out.
        """

        def enough() -> bool:
            return self._task.done() or (
                sum(1 for e in self.events if where is None or where(e)) >= count
            )

        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(enough)
            except TimeoutError:
                return False
        if self._task.done() and not self._task.cancelled():
            self._task.result()  # raises the stream's error
        return not self._task.done()

    async def stop(self) -> None:
        """Stop consuming."""
        await cancel_and_wait(self._task)


class StoreSuiteBase:
    """The helpers every store suite class uses."""

    async def registered(self, store: RunStateStore, **kwargs: Any) -> RunHeader:
        """A newly registered run."""
        header, created = await store.register_run(make_header(**kwargs))
        assert created
        return header
