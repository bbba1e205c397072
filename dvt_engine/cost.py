"""Cost metering: the price table and the pure fold from a run's events to usage rows.

Usage is a projection of the event log, never a second source of truth: the same events
always fold to the same rows (docs/cost.md). A ``BudgetWatch`` refolds a tenant's month as
its runs use units, so budget crossings are noticed while runs go on. Units are Decimals
rounded to 6 places at every charge, so sums do not depend on float rounding or on the order
runs are read in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal

from pydantic import Field

from dvt_engine.admission import AdmissionStore, BudgetCrossing
from dvt_engine.errors import QuotaExceeded, UsageQueryInvalid
from dvt_engine.models.base import Identifier, StrictModel
from dvt_engine.models.events import Event, EventType
from dvt_engine.ports import RunStateStore
from dvt_engine.rules.foreach import STEP_EXPANDED
from dvt_engine.waiting import cancel_and_wait

log = logging.getLogger("dvt_engine.cost")

GroupBy = Literal["plan", "run", "day"]
GROUP_BYS: tuple[str, ...] = ("plan", "run", "day")
#: The longest window one usage query may span (a year and a day, for a leap year).
MAX_WINDOW_DAYS = 367
_QUANTUM = Decimal("0.000001")
_MIB = Decimal(1048576)
# list_runs pages; a page this size keeps each query small.
_PAGE = 500
#: Runs whose events are read at once (a store's pool serves a few connections).
READ_CONCURRENCY = 4


def units(value: Decimal | int | str) -> Decimal:
    """A unit amount rounded to the metering quantum (6 decimal places)."""
    return Decimal(value).quantize(_QUANTUM, rounding=ROUND_HALF_UP)


class PriceTable(StrictModel):
    """What one second of step time, one MiB of artifacts and one run cost, in units."""

    compute_units_per_second: Decimal = Field(default=Decimal(1), ge=0, le=1_000_000)
    data_units_per_mib: Decimal = Field(default=Decimal("0.01"), ge=0, le=1_000_000)
    units_per_run: Decimal = Field(default=Decimal(1), ge=0, le=1_000_000)
    #: A second of step time of each resource class (plan v1.3); other steps pay the default.
    class_units_per_second: dict[Identifier, Annotated[Decimal, Field(ge=0, le=1_000_000)]] = \
        Field(default_factory=dict)

    def units_per_second(self, resource_class: str | None) -> Decimal:
        """The price of a second of a step of ``resource_class`` (None: no class)."""
        if resource_class is None:
            return self.compute_units_per_second
        return self.class_units_per_second.get(resource_class, self.compute_units_per_second)


@dataclass(frozen=True)
class UsageRow:
    """What one run used on one UTC day (a row of the usage projection)."""

    day: date
    run_id: str
    plan_id: str
    runs: int
    compute_units: Decimal
    data_units: Decimal
    run_units: Decimal = Decimal(0)

    @property
    def total_units(self) -> Decimal:
        """Run, compute and data units together."""
        return self.compute_units + self.data_units + self.run_units

    def document(self) -> dict[str, Any]:
        """The row as JSON-safe data (units as decimal strings, exact)."""
        return {"day": self.day.isoformat(), "runId": self.run_id, "planId": self.plan_id,
                "runs": self.runs, "runUnits": str(self.run_units),
                "computeUnits": str(self.compute_units), "dataUnits": str(self.data_units)}


@dataclass
class _Day:
    plan_id: str
    runs: int = 0
    run_units: Decimal = Decimal(0)
    compute: Decimal = Decimal(0)
    data: Decimal = Decimal(0)


def _day(at: datetime) -> date:
    return at.astimezone(UTC).date() if at.tzinfo is not None else at.date()


def _artifact_bytes(payload: dict[str, Any]) -> int:
    total = 0
    for artifact in payload.get("artifacts") or ():
        size = artifact.get("sizeBytes") if isinstance(artifact, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            total += size
    return total


def _hinted_units(payload: dict[str, Any]) -> Decimal | None:
    cost = payload.get("cost")
    value = cost.get("units") if isinstance(cost, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return units(str(value))


def meter_run(events: Sequence[Event], prices: PriceTable) -> list[UsageRow]:
    """Fold one run's events (runSeq order) into its usage rows, one per UTC day it used.

    A run costs ``unitsPerRun`` on the day of its first RunStarted. A completed step attempt
    with units in its cost (its costHint, or units its step reported) costs exactly those
    units, whatever it took, so engine timing never changes them; any other finished attempt
    costs its duration (StepStarted to StepCompleted/StepFailed, event timestamps) times the
    price of a second of its resource class (StepStarted's ``resourceClass``:
    ``classUnitsPerSecond``, else ``computeUnitsPerSecond``). Artifact bytes cost
    ``dataUnitsPerMiB`` per MiB.
    """
    days: dict[date, _Day] = {}
    started: dict[tuple[str, int], datetime] = {}
    rates: dict[tuple[str, int], Decimal] = {}
    run_charged = False
    for event in events:
        kind = event.event_type
        at = event.occurred_at or event.emitted_at
        if kind == EventType.RUN_STARTED and not run_charged:
            run_charged = True
            slot = days.setdefault(_day(at), _Day(event.plan_id))
            slot.runs = 1
            slot.run_units += units(prices.units_per_run)
        elif kind == EventType.STEP_STARTED and event.step_id is not None:
            key = (event.step_id, event.logical_attempt_id)
            if key not in started:
                started[key] = at
                cls = event.payload.get("resourceClass")
                rates[key] = prices.units_per_second(cls if isinstance(cls, str) else None)
        elif kind == STEP_EXPANDED and event.step_id is not None:
            # A forEach template does no work of its own: its children are metered.
            started.pop((event.step_id, event.logical_attempt_id), None)
            rates.pop((event.step_id, event.logical_attempt_id), None)
        elif kind in (EventType.STEP_COMPLETED, EventType.STEP_FAILED) and event.step_id:
            key = (event.step_id, event.logical_attempt_id)
            begun = started.pop(key, None)
            rate = rates.pop(key, prices.compute_units_per_second)
            hinted = (_hinted_units(event.payload)
                      if kind == EventType.STEP_COMPLETED else None)
            if hinted is not None:
                compute = hinted
            elif begun is not None:
                ms = max(0, (at - begun) // timedelta(milliseconds=1))
                compute = units(Decimal(ms) / 1000 * rate)
            else:
                compute = Decimal(0)
            data = units(Decimal(_artifact_bytes(event.payload)) / _MIB
                         * prices.data_units_per_mib)
            slot = days.setdefault(_day(at), _Day(event.plan_id))
            slot.compute += compute
            slot.data += data
    run_id = events[0].run_id if events else ""
    return [UsageRow(day=d, run_id=run_id, plan_id=s.plan_id, runs=s.runs,
                     compute_units=units(s.compute), data_units=units(s.data),
                     run_units=units(s.run_units))
            for d, s in sorted(days.items())]


def rows_bytes(rows: Iterable[UsageRow]) -> bytes:
    """The rows as canonical JSON bytes (sorted by day and run): a rebuild compares these."""
    ordered = sorted(rows, key=lambda r: (r.day, r.run_id))
    return json.dumps([r.document() for r in ordered], sort_keys=True,
                      separators=(",", ":")).encode()


@dataclass(frozen=True)
class UsageWindow:
    """A half-open window of UTC days ``[start, end)`` and how to group it."""

    start: date
    end: date
    group_by: GroupBy = "plan"

    @classmethod
    def parse(cls, start: str | None, end: str | None, group_by: str | None = None,
              *, today: date | None = None) -> UsageWindow:
        """Check a query (YYYY-MM-DD dates; default: this month so far); USAGE_QUERY_INVALID."""
        day = today or datetime.now(UTC).date()
        try:
            # Only an absent date takes the default: `to=` is a date that is not there.
            first = date.fromisoformat(start) if start is not None else day.replace(day=1)
            last = date.fromisoformat(end) if end is not None else day + timedelta(days=1)
        except (TypeError, ValueError):
            raise UsageQueryInvalid("from and to must be dates like 2026-11-01",
                                    details={"from": start, "to": end}) from None
        if last <= first:
            raise UsageQueryInvalid("to must be after from",
                                    details={"from": first.isoformat(), "to": last.isoformat()})
        if (last - first).days > MAX_WINDOW_DAYS:
            raise UsageQueryInvalid(f"a usage window spans at most {MAX_WINDOW_DAYS} days",
                                    details={"from": first.isoformat(), "to": last.isoformat()})
        grouping = group_by or "plan"
        if grouping not in GROUP_BYS:
            raise UsageQueryInvalid("groupBy must be plan, run or day",
                                    details={"groupBy": group_by})
        return cls(first, last, grouping)  # type: ignore[arg-type]


def _number(value: Decimal) -> int | float:
    exact = value.normalize()
    return int(exact) if exact == exact.to_integral_value() else float(exact)


def summarize(rows: Iterable[UsageRow], window: UsageWindow) -> dict[str, Any]:
    """The usage answer: ``{from, to, totalUnits, items: [{key, runs, ...}]}``, keys sorted."""
    groups: dict[str, tuple[set[str], list[Decimal]]] = {}
    for row in rows:
        if not window.start <= row.day < window.end:
            continue
        key = {"plan": row.plan_id, "run": row.run_id,
               "day": row.day.isoformat()}[window.group_by]
        runs, sums = groups.setdefault(key, (set(), [Decimal(0), Decimal(0), Decimal(0)]))
        if row.runs or window.group_by != "day":
            runs.add(row.run_id)
        sums[0] += row.compute_units
        sums[1] += row.data_units
        sums[2] += row.total_units
    items = [{"key": key, "runs": len(runs), "computeUnits": _number(sums[0]),
              "dataUnits": _number(sums[1]), "totalUnits": _number(sums[2])}
             for key, (runs, sums) in sorted(groups.items())]
    total = sum((s[2] for _, s in groups.values()), Decimal(0))
    return {"from": window.start.isoformat(), "to": window.end.isoformat(),
            "totalUnits": _number(total), "items": items}


#: A run last written this long before a window starts has no event in it: event times
#: (occurredAt, emittedAt) precede the append that stores them, and a day covers any clock
#: difference between a worker and the database.
_QUIET_MARGIN = timedelta(days=1)


#: A run's rows by (tenant, run, last write, price table): a log that was not written since is
#: folded once, so a budget check reads only the runs that moved. Bounded, least recent out.
_FOLDED: OrderedDict[tuple[str, str, datetime, str], list[UsageRow]] = OrderedDict()
_FOLDED_MAX = 50_000


async def _tenant_runs(store: RunStateStore, tenant_id: str, created_before: datetime,
                       written_since: datetime | None
                       ) -> AsyncIterator[list[tuple[str, datetime]]]:
    cursor: tuple[datetime, str] | None = None
    while True:
        page = await store.list_runs(tenant_id, created_before=created_before,
                                     limit=_PAGE, before=cursor)
        yield [(run.run_id, run.updated_at) for run in page
               if written_since is None or run.updated_at >= written_since]
        if len(page) < _PAGE:
            return
        cursor = (page[-1].created_at, page[-1].run_id)


async def usage_rows(store: RunStateStore, tenant_id: str, prices: PriceTable,
                     *, before: date | None = None, since: date | None = None
                     ) -> list[UsageRow]:
    """Fold the log of every run of the tenant created before ``before`` (a rebuild); with
    ``since``, runs last written well before that day are not read (they have no row from it).

    Runs are read a few at a time (``READ_CONCURRENCY``): one read per run, so a tenant's
    query costs round trips, not one after the other.
    """
    limit = datetime.combine(before or date.max - timedelta(days=1), datetime.min.time(), UTC)
    written_since = (None if since is None else
                     datetime.combine(since, datetime.min.time(), UTC) - _QUIET_MARGIN)
    gate = asyncio.Semaphore(READ_CONCURRENCY)
    price_key = prices.model_dump_json()

    async def fold(run_id: str, written: datetime) -> list[UsageRow]:
        key = (tenant_id, run_id, written, price_key)
        if (known := _FOLDED.get(key)) is not None:
            _FOLDED.move_to_end(key)
            return known
        async with gate:
            events = await store.fetch_events(tenant_id, run_id)
        found = meter_run(events, prices)
        if events and events[-1].persisted_at is not None and \
                events[-1].persisted_at <= written:
            # Only a log read as of its listed last write is that write's fold.
            _FOLDED[key] = found
            if len(_FOLDED) > _FOLDED_MAX:
                _FOLDED.popitem(last=False)
        return found

    rows: list[UsageRow] = []
    async for runs in _tenant_runs(store, tenant_id, limit, written_since):
        for found in await asyncio.gather(*(fold(run_id, written) for run_id, written in runs)):
            rows.extend(found)
    return rows


async def month_to_date(store: RunStateStore, tenant_id: str, prices: PriceTable,
                        *, today: date | None = None) -> Decimal:
    """Units the tenant used this calendar month (UTC) so far, folded from the log."""
    window = UsageWindow.parse(None, None, today=today)
    rows = await usage_rows(store, tenant_id, prices, before=window.end, since=window.start)
    return sum((r.total_units for r in rows if window.start <= r.day < window.end), Decimal(0))


#: Percentages of the monthly budget whose crossing is recorded once per month.
THRESHOLDS = (80, 100)


@dataclass(frozen=True)
class BudgetCheck:
    """A tenant's month so far against its budget, and the crossings recorded just now."""

    spent: Decimal
    budget: int | None
    policy: str
    new_crossings: tuple[BudgetCrossing, ...] = ()

    def refuse_if_spent(self) -> None:
        """QUOTA_EXCEEDED (kind budget) when a ``block`` budget is spent; running runs go on."""
        if self.budget is not None and self.policy == "block" and self.spent >= self.budget:
            raise QuotaExceeded(
                f"the tenant used {_number(self.spent)} of its {self.budget} monthly budget"
                " units", details={"kind": "budget", "usedUnits": _number(self.spent),
                                   "budgetUnits": self.budget})


async def check_budget(admission: AdmissionStore, store: RunStateStore, tenant_id: str,
                       prices: PriceTable, *, today: date | None = None) -> BudgetCheck:
    """Fold the tenant's month and record each threshold it crossed (once per month).

    Without a budget nothing is read. The caller refuses the start with
    ``refuse_if_spent()`` and announces ``new_crossings`` (log, metric, webhook).
    """
    limits = await admission.limits(tenant_id)
    budget = limits.monthly_budget_units
    if budget is None:
        return BudgetCheck(Decimal(0), None, limits.budget_policy)
    day = today or datetime.now(UTC).date()
    spent = await month_to_date(store, tenant_id, prices, today=day)
    new: list[BudgetCrossing] = []
    for threshold in THRESHOLDS:
        if spent * 100 >= budget * threshold:
            crossing = BudgetCrossing(tenant_id, day.strftime("%Y-%m"), threshold, spent, budget)
            if await admission.record_crossing(crossing):
                new.append(crossing)
    return BudgetCheck(spent, budget, limits.budget_policy, tuple(new))


#: Events that add units to a tenant's month: a run's start and the end of a step attempt.
CHARGING_EVENTS = frozenset({EventType.RUN_STARTED, EventType.STEP_COMPLETED,
                             EventType.STEP_FAILED})

Announce = Callable[[Sequence[BudgetCrossing]], Awaitable[None]]


class BudgetWatch:
    """Checks a tenant's budget whenever its month's usage grows (a run starts, a step ends),
    so a crossing of 80 %/100 % is recorded while the run that crossed it is still going.

    Feed it committed events (``saw``), or let it follow a tenant's stream (``follow``).
    Checks are coalesced per tenant: one at a time, at most one per ``interval_s``, and any
    number of events that arrive during a check cause one more check after it. Recording is
    idempotent across processes (``AdmissionStore.record_crossing``), so only the process
    that records a crossing announces it. A tenant whose month reached its whole budget is
    not checked again that month: both crossings are recorded, and ``block`` refuses its
    starts at admission.
    """

    def __init__(self, admission: AdmissionStore, store: RunStateStore,
                 prices: Callable[[], PriceTable], announce: Announce, *,
                 interval_s: float = 1.0) -> None:
        self.admission, self.store, self.prices, self.announce = admission, store, prices, announce
        # A check folds the tenant's month (a list of its runs, the changed ones read again):
        # one a second keeps a busy tenant's cost bounded and still notices within a second.
        self.interval_s = interval_s
        self._due: set[str] = set()
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._spent: set[tuple[str, str]] = set()
        self._followers: list[asyncio.Task[None]] = []

    def saw(self, events: Iterable[Event]) -> None:
        """Events committed to the store: check the budget of each tenant they charged."""
        month = datetime.now(UTC).strftime("%Y-%m")
        for event in events:
            tenant = event.tenant_id
            if event.event_type not in CHARGING_EVENTS or (tenant, month) in self._spent:
                continue
            self._due.add(tenant)
            if tenant not in self._checks:
                self._checks[tenant] = asyncio.create_task(self._check(tenant),
                                                           name="dvt-budget-check")

    def follow(self, tenant_id: str) -> None:
        """Watch the tenant's committed events in the background (until ``close``)."""
        async def forever() -> None:
            async for item in self.store.follow_tenant(tenant_id):
                self.saw((item.event,))

        self._followers.append(asyncio.create_task(forever(), name="dvt-budget-follow"))

    async def _check(self, tenant_id: str) -> None:
        began = None
        try:
            while tenant_id in self._due:
                if began is not None:  # a busy tenant is folded at most once per interval
                    await asyncio.sleep(max(0.0, began + self.interval_s - time.monotonic()))
                began = time.monotonic()
                self._due.discard(tenant_id)
                try:
                    check = await check_budget(self.admission, self.store, tenant_id,
                                               self.prices())
                    if check.new_crossings:
                        await self.announce(check.new_crossings)
                except Exception as exc:  # the next charging event checks again
                    log.warning("budget check failed", extra={"code": type(exc).__name__})
                    continue
                if check.budget is not None and check.spent >= check.budget:
                    self._spent.add((tenant_id, datetime.now(UTC).strftime("%Y-%m")))
        finally:
            self._checks.pop(tenant_id, None)

    async def settled(self) -> None:
        """Return once no check is under way or due (what is seen until then is checked)."""
        while self._checks:
            await asyncio.gather(*self._checks.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stop following and drop checks under way (a later check or start redoes them)."""
        for task in [*self._followers, *self._checks.values()]:
            await cancel_and_wait(task)
        self._followers.clear()
