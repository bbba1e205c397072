"""Building signal-service test runs in known states: real events through the state machine."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from dvt_engine.eventlog import EventFactory, RunWriter
from dvt_engine.idempotency import run_request_key
from dvt_engine.models.events import Event, EventType
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunHeader, StepOutline
from dvt_engine.models.signals import (
    Actor,
    Role,
    SignalRequest,
    SignalType,
)
from dvt_engine.signals import (
    RATE_LIMIT_CAPABILITY,
)
from dvt_engine.stores.memory import MemoryRunStateStore

TENANT = "tenant-a"
RATE = frozenset({RATE_LIMIT_CAPABILITY})
ALL_ROLES = (Role.ADMIN, Role.APPROVER)
_ids = itertools.count(1)


# --- building runs in known states ------------------------------------------------------------


def make_header(
    run_id: str, *, tenant: str = TENANT, requires_approval: bool = False
) -> RunHeader:
    plan_ref = PlanRef(uri="plan://sha256/" + "a" * 64, sha256="a" * 64, schema_version="v1.2",
                       plan_id="plan", plan_version="1.0.0")
    return RunHeader(
        tenant_id=tenant, project_id="proj", environment_id="env", run_id=run_id,
        plan_id="plan", plan_version="1.0.0", plan_ref=plan_ref,
        steps=(StepOutline(step_id="a", kind="noop"),
               StepOutline(step_id="b", kind="noop", depends_on=("a",)),
               StepOutline(step_id="gate", kind="approval")),
        requires_approval=requires_approval, engine="reference",
        run_request_key=run_request_key(tenant, "proj", "env", "plan", "1.0.0", run_id),
        params={"date": "2026-11-21"}, labels={"team": "data"},
        created_at=datetime(2026, 11, 21, tzinfo=UTC),
    )


class Run:
    """A registered run driven through real events (the state machine checks every one)."""

    def __init__(self, store: MemoryRunStateStore, header: RunHeader) -> None:
        self.store, self.header = store, header
        self.writer = RunWriter(store, header)
        self.events = EventFactory(header, "engine")
        self.pauses = 0

    @property
    def run_id(self) -> str:
        return self.header.run_id

    async def run(self, event_type: EventType, payload: dict[str, Any] | None = None,
                  discriminator: int | None = None) -> None:
        await self.writer.append(self.events.run_event(event_type, payload,
                                                       discriminator=discriminator))

    async def step(self, event_type: EventType, step_id: str,
                   payload: dict[str, Any] | None = None, attempt: int = 1) -> None:
        await self.writer.append(self.events.step_event(event_type, step_id, payload,
                                                        logical_attempt_id=attempt))

    async def start(self) -> Run:
        await self.run(EventType.RUN_STARTED, {"engine": "reference"})
        return self

    async def pause(self) -> Run:
        self.pauses += 1
        await self.run(EventType.RUN_PAUSED, {"ordinal": self.pauses}, self.pauses)
        return self

    async def fail_step(self, step_id: str) -> Run:
        await self.step(EventType.STEP_STARTED, step_id, {"kind": "noop"})
        await self.step(EventType.STEP_FAILED, step_id,
                        {"error": {"code": "BOOM", "message": "boom", "retryable": False}})
        return self

    async def complete_step(self, step_id: str) -> Run:
        await self.step(EventType.STEP_STARTED, step_id, {"kind": "noop"})
        await self.step(EventType.STEP_COMPLETED, step_id, {"output": {"ok": True}})
        return self

    async def await_gate(self) -> Run:
        await self.step(EventType.STEP_STARTED, "gate", {"kind": "approval"})
        await self.step(EventType.STEP_AWAITING_APPROVAL, "gate", {})
        return self

    async def log(self) -> list[Event]:
        return await self.store.fetch_events(self.header.tenant_id, self.run_id)

    async def decisions(self) -> list[Event]:
        return [e for e in await self.log()
                if e.event_type in (EventType.SIGNAL_ACCEPTED, EventType.SIGNAL_REJECTED)]


async def new_run(store: MemoryRunStateStore, *, tenant: str = TENANT,
                  requires_approval: bool = False) -> Run:
    header = make_header(f"run-{next(_ids)}", tenant=tenant, requires_approval=requires_approval)
    await store.register_run(header)
    return Run(store, header)


def request(run: Run | str, signal_type: SignalType, payload: dict[str, Any] | None = None, *,
            roles: tuple[Role, ...] = ALL_ROLES, signal_id: str | None = None,
            tenant: str = TENANT, actor_id: str = "alice") -> SignalRequest:
    return SignalRequest(
        signal_id=signal_id or f"sig-{next(_ids)}", type=signal_type, tenant_id=tenant,
        run_id=run if isinstance(run, str) else run.run_id, payload=payload or {},
        actor=Actor(id=actor_id, roles=roles),
    )


class FakeClock:
    """A controllable clock (named fake: it stands in for wall time in rate-limit tests)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# --- rule 4: state ----------------------------------------------------------------------------


Setup = Callable[[Run], Any]


async def _running(run: Run) -> None:
    await run.start()


async def _paused(run: Run) -> None:
    await run.start()
    await run.pause()


async def _terminal(status: EventType, run: Run) -> None:
    await run.start()
    payload = {"code": "X", "message": "x"} if status == EventType.RUN_FAILED else {}
    await run.run(status, payload)


async def _failed_step(run: Run) -> None:
    await run.start()
    await run.fail_step("a")


async def _done_step(run: Run) -> None:
    await run.start()
    await run.complete_step("a")


async def _skipped_step(run: Run) -> None:
    await run.start()
    await run.step(EventType.STEP_SKIPPED, "a", {"reason": "not needed"})


async def _running_step(run: Run) -> None:
    await run.start()
    await run.step(EventType.STEP_STARTED, "a", {"kind": "noop"})


async def _gate(run: Run) -> None:
    await run.start()
    await run.await_gate()


async def _gate_paused(run: Run) -> None:
    await _gate(run)
    await run.pause()


async def _gate_started_only(run: Run) -> None:
    await run.start()
    await run.step(EventType.STEP_STARTED, "gate", {"kind": "approval"})


async def _pending(run: Run) -> None:
    return None


async def _approved(run: Run) -> None:
    await run.run(EventType.RUN_APPROVED, {"approver": "bob"})
