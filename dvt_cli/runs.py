"""Bodies of the run commands: run, validate, status, events, runs, signal.

Slightly over 500 lines: the six commands share one way to open a client, print a run and map
its errors to exit codes, kept here rather than spread over six modules.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from pydantic import TypeAdapter, ValidationError

from dvt_cli import dag
from dvt_cli import output as out
from dvt_cli.live import live_view
from dvt_cli.plans import read_plan_bytes, store_plan, validate_for_engine
from dvt_cli.session import (
    engine_session,
    pick_engine,
    prepare_local_servers,
    resolve,
    store_session,
)
from dvt_cli.settings import Settings
from dvt_engine.errors import RunNotFound, SchemaValidationFailed, UsageError
from dvt_engine.idempotency import run_request_key
from dvt_engine.identifiers import validate_identifier
from dvt_engine.labels import parse_label_pairs
from dvt_engine.models.events import TERMINAL_RUN_EVENTS, Event
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import EngineRunRef, RunContext, RunHeader, RunStatus, RunSummary
from dvt_engine.models.signals import Actor, Role, SignalRequest, SignalType
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.models.validation import ValidationReport
from dvt_engine.ports import RunStateStore
from dvt_engine.waiting import wait_for_snapshot

# After the terminal event is in the log, the stored snapshot follows within this bound.
SNAPSHOT_CATCH_UP_S = 30.0


def exit_code_for(status: RunStatus) -> int:
    """0 for COMPLETED, 1 for FAILED or CANCELLED (contract §13)."""
    return out.EXIT_OK if status == RunStatus.COMPLETED else out.EXIT_RUN_FAILED


def _identity_checked(settings: Settings) -> None:
    i = settings.identity
    validate_identifier("tenant", i.tenant)
    validate_identifier("project", i.project)
    validate_identifier("environment", i.environment)


# --- run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """What `dvt run` was asked beyond the common settings."""

    plan_path: str
    run_id: str | None = None
    request_id: str | None = None
    detach: bool = False
    worker: bool = True
    triggered_by: str | None = None
    labels: tuple[str, ...] = ()
    live: bool = False


async def run_plan(settings: Settings, options: RunOptions) -> int:
    """Store the plan, start it, follow it to the end and print the final snapshot."""
    data = read_plan_bytes(options.plan_path)
    _identity_checked(settings)
    run_id = validate_identifier("run id", options.run_id or str(uuid.uuid4()))
    if options.request_id is not None:
        validate_identifier("request id", options.request_id)
    # Bad labels are refused before any local server is started for the run.
    labels = parse_label_pairs(options.labels, path="--label")
    engine_name = pick_engine(settings)
    settings = resolve(settings)
    settings = prepare_local_servers(engine_name, settings)
    if options.detach and (settings.store_url or "memory://").startswith("memory:"):
        raise UsageError(
            "--detach needs a store that outlives this command",
            details={"hint": "run `dvt dev up` or set DVT_STORE_URL to a PostgreSQL URL"},
        )
    i = settings.identity
    async with store_session(settings) as store:
        try:
            plan_ref = await store_plan(store, data)
        except SchemaValidationFailed as exc:
            # The class hint names a JSON field; people get a command that shows everything.
            exc.details["hint"] = (f"`dvt validate {options.plan_path}` lists every problem "
                                   "of the plan file")
            raise
        context = RunContext(
            tenant_id=i.tenant, project_id=i.project, environment_id=i.environment,
            run_id=run_id, run_request_id=options.request_id,
            triggered_by=options.triggered_by,
            labels=labels,
        )
        async with engine_session(engine_name, store, settings, worker=options.worker) as engine:
            await engine.start_run(plan_ref, context)
            header = await _started_run(store, plan_ref, context)
            if not settings.json:
                out.say(f"run {header.run_id} started on {header.engine} "
                           f"(plan {header.plan_id}@{header.plan_version}, {plan_ref.uri})")
                if header.requires_approval:
                    out.say(approval_notice(header.run_id))
                out.flush()
            if options.detach:
                if settings.json:
                    snapshot = await _snapshot(store, i.tenant, header.run_id)
                    out.emit_json(out.run_document(snapshot))
                return out.EXIT_OK
            try:
                if options.live:
                    with live_view(header.run_id, [s.step_id for s in header.steps]) as view:
                        snapshot = await follow_to_end(store, i.tenant, header.run_id,
                                                       view.feed)
                else:
                    printer = None if settings.json else _print_event
                    snapshot = await follow_to_end(store, i.tenant, header.run_id, printer)
            except asyncio.CancelledError:
                # Ctrl-C: say what becomes of the run before the workers in this process stop.
                if header.engine == "reference":
                    out.notice(f"dvt: run {header.run_id} stops with this command "
                               "(the reference engine runs in process)")
                else:
                    out.notice(f"dvt: run {header.run_id} stays on {header.engine}; a worker "
                               f"(`dvt worker --engine {header.engine}`) continues it and "
                               f"`dvt events {header.run_id} --follow` shows it")
                raise
    if settings.json:
        out.emit_json(out.run_document(snapshot))
    else:
        out.print_snapshot(snapshot)
    return exit_code_for(snapshot.status)


def approval_notice(run_id: str) -> str:
    """What `dvt run` says when the plan needs an APPROVE_RUN before it starts."""
    return (f"the plan requires approval: dvt signal {run_id} approve-run (from another shell, "
            "with a lasting store)")


async def _started_run(store: RunStateStore, plan_ref: PlanRef, context: RunContext) -> RunHeader:
    """The run that start_run registered: ours, or the earlier run of the same request."""
    key = run_request_key(context.tenant_id, context.project_id, context.environment_id,
                          plan_ref.plan_id, plan_ref.plan_version,
                          context.run_request_id or context.run_id)
    header = await store.get_run(context.tenant_id, context.run_id)
    if header is not None and header.run_request_key == key:
        return header
    # A repeated --request-id started nothing new: find the first run of that request.
    for summary in await store.list_runs(context.tenant_id, limit=1000):
        found = await store.get_run(context.tenant_id, summary.run_id)
        if found is not None and found.run_request_key == key:
            return found
    raise RunNotFound(f"the engine accepted run {context.run_id} but the store does not know it",
                      details={"runId": context.run_id})


def _print_event(event: Event) -> None:
    out.say(out.describe_event(event))
    out.flush()


async def follow_to_end(store: RunStateStore, tenant: str, run_id: str,
                        printer: Any = None) -> RunSnapshot:
    """Follow a run's log (printing each event) until its terminal event; return the snapshot."""
    async for event in store.follow(tenant, run_id, after_seq=0):
        if printer is not None:
            printer(event)
        if event.event_type in TERMINAL_RUN_EVENTS:
            break
    return await wait_for_snapshot(store, tenant, run_id, lambda s: s.status.is_terminal,
                                   timeout=SNAPSHOT_CATCH_UP_S)


async def _snapshot(store: RunStateStore, tenant: str, run_id: str) -> RunSnapshot:
    snapshot = await store.get_snapshot(tenant, run_id)
    if snapshot is None:
        raise _not_found(store, run_id)
    return snapshot


def _not_found(store: RunStateStore, run_id: str) -> RunNotFound:
    hint = "Check the run id, the tenant (--tenant / DVT_TENANT) and the store URL."
    if type(store).__name__.startswith("Memory"):
        hint = ("The in-memory store only holds runs of the current command; run `dvt dev up` "
                "or set DVT_STORE_URL so runs outlive the command that started them.")
    return RunNotFound(f"run {run_id!r} not found", details={"runId": run_id, "hint": hint})


# --- validate -----------------------------------------------------------------------------


async def validate_plan(settings: Settings, plan_path: str) -> int:
    """Print the validation report of a plan for an engine; 0 when it can run, 2 otherwise."""
    data = read_plan_bytes(plan_path)
    engine_name = pick_engine(settings)
    # Validation needs the engine's capabilities and kinds only: no server, no worker, no store.
    offline = replace(settings, store_url="memory://")
    async with (
        store_session(offline, quiet_memory=True) as store,
        engine_session(engine_name, store, settings, worker=False) as engine,
    ):
        report = await validate_for_engine(data, engine_name, engine)
    return print_report(report, plan_path, settings.json)


def print_report(report: ValidationReport, plan_path: str, as_json: bool) -> int:
    """Show a validation report (local or from the service); 0 when it can run, else 2."""
    if as_json:
        out.emit_json(report.model_dump(mode="json"))
    else:
        verdict = "can run" if report.ok else "cannot run"
        # A file that is no plan document has no id to show: name the file instead.
        what = (f"plan {report.plan_id}@{report.plan_version or '?'}" if report.plan_id
                else f"plan file {plan_path} (no plan id could be read)")
        out.say(f"{what} {verdict} on {report.engine}")
        for issue in report.issues:
            where = f" [{issue.step_id or issue.path}]" if (issue.step_id or issue.path) else ""
            out.say(f"  {issue.severity} {issue.code}{where}: {issue.message}")
        caps = report.capabilities
        if caps is not None and caps.required:
            out.say(f"  capabilities: {caps.resolution} (missing: "
                       f"{', '.join(caps.missing) or 'none'})")
        if caps is not None and caps.flow_features:
            out.say("  flow features: " + ", ".join(
                f"{name} {how}" for name, how in caps.flow_features.items()))
    return out.EXIT_OK if report.ok else out.EXIT_REFUSED


# --- status, events, runs -----------------------------------------------------------------


async def show_status(settings: Settings, run_id: str, with_dag: bool = False) -> int:
    """Print a run's snapshot (or, ``with_dag``, its plan's DAG with each step's state)."""
    _identity_checked(settings)
    validate_identifier("run id", run_id)
    settings = resolve(settings)
    async with store_session(settings) as store:
        snapshot = await _snapshot(store, settings.identity.tenant, run_id)
        header = await store.get_run(settings.identity.tenant, run_id) if with_dag else None
    if header is not None:
        steps = dag.layered(((s.step_id, s.depends_on) for s in header.steps), snapshot)
        print_dag(snapshot, steps, settings.json)
    elif settings.json:
        out.emit_json(out.run_document(snapshot))
    else:
        out.print_snapshot(snapshot)
    return out.EXIT_OK


def print_dag(snapshot: RunSnapshot, steps: list[dag.DagStep], as_json: bool) -> None:
    """Show a run's DAG (local or from the service): a tree, or the run document plus
    ``dag`` under --json."""
    if as_json:
        out.emit_json({**out.run_document(snapshot), "dag": dag.dag_document(steps)})
    else:
        dag.draw(snapshot, steps)


async def show_events(settings: Settings, run_id: str, follow: bool,
                      until: str | None = None, live: bool = False) -> int:
    """Print every stored event of a run in runSeq order (JSON Lines under --json).

    ``follow`` keeps printing new events until the run's terminal event, then prints what is
    already stored after it (signals decided on the ended run); ``until`` stops after the first
    event of that type (waiting for it if needed), or like ``follow`` at the end of the run.
    """
    _identity_checked(settings)
    validate_identifier("run id", run_id)
    settings = resolve(settings)
    tenant = settings.identity.tenant
    async with store_session(settings) as store:
        snapshot = await _snapshot(store, tenant, run_id)
        with event_printer(snapshot, settings.json, live and (follow or until is not None)
                            ) as emit:
            last_seq = 0
            ended = False
            for event in await store.fetch_events(tenant, run_id):
                emit(event)
                last_seq = event.run_seq or last_seq
                if until is not None and event.event_type == until:
                    return out.EXIT_OK
                ended = ended or event.event_type in TERMINAL_RUN_EVENTS
            if ended or not (follow or until is not None):
                return out.EXIT_OK
            async for event in store.follow(tenant, run_id, after_seq=last_seq):
                emit(event)
                last_seq = event.run_seq or last_seq
                if until is not None and event.event_type == until:
                    return out.EXIT_OK
                if event.event_type in TERMINAL_RUN_EVENTS:
                    break
            # Decisions on signals that arrived after the end (e.g. a rejected PAUSE) follow
            # the terminal event in the log; they are part of the run's record.
            for event in await store.fetch_events(tenant, run_id, after_seq=last_seq):
                emit(event)
    return out.EXIT_OK


@contextmanager
def event_printer(snapshot: RunSnapshot, as_json: bool,
                  live: bool) -> Iterator[Callable[[Event], None]]:
    """How `dvt events` shows each event: the live display, or a plain line (or JSON)."""
    if not live:
        yield lambda event: _emit_event(event, as_json)
        return
    with live_view(snapshot.run_id, [s.step_id for s in snapshot.steps]) as view:
        yield view.feed


def _emit_event(event: Event, as_json: bool) -> None:
    if as_json:
        out.emit_json(out.event_document(event))
    else:
        out.say(out.describe_event(event))
    out.flush()


@dataclass(frozen=True)
class RunQuery:
    """What `dvt runs` was asked: filters (each must hold) and a page size."""

    statuses: tuple[str, ...] = ()
    plan_id: str | None = None
    labels: tuple[str, ...] = ()
    limit: int = 50


async def list_runs(settings: Settings, query: RunQuery) -> int:
    """Print the tenant's runs, newest first."""
    _identity_checked(settings)
    labels = parse_label_pairs(query.labels, path="--label")
    if query.plan_id is not None:
        validate_identifier("--plan", query.plan_id)
    settings = resolve(settings)
    wanted = [RunStatus(s.upper()) for s in query.statuses] or None
    async with store_session(settings) as store:
        rows = await store.list_runs(settings.identity.tenant, status=wanted,
                                     plan_id=query.plan_id, labels=labels or None,
                                     limit=query.limit)
    return print_run_list(rows, as_json=settings.json)


# --- signal -------------------------------------------------------------------------------

ACTIONS: dict[str, SignalType] = {
    "pause": SignalType.PAUSE,
    "resume": SignalType.RESUME,
    "cancel": SignalType.CANCEL,
    "retry-step": SignalType.RETRY_STEP,
    "skip-step": SignalType.SKIP_STEP,
    "approve": SignalType.APPROVE_STEP,
    "reject": SignalType.APPROVE_STEP,
    "retry-run": SignalType.RETRY_RUN,
    "approve-run": SignalType.APPROVE_RUN,
    "reject-run": SignalType.APPROVE_RUN,
}
STEP_ACTIONS = frozenset({"retry-step", "skip-step", "approve", "reject"})


@dataclass(frozen=True)
class SignalOptions:
    """What `dvt signal` was asked."""

    run_id: str
    action: str
    step_id: str | None = None
    signal_id: str | None = None
    actor: str = "cli"
    roles: tuple[Role, ...] = ()
    reason: str | None = None
    #: A custom signal's data (``action`` is then its name); None for a built-in action.
    data: dict[str, Any] | None = None

    @property
    def custom(self) -> bool:
        """True when ``action`` names a custom signal of the run's plan (plan v1.3)."""
        return self.action not in ACTIONS


def parse_signal_data(action: str, text: str | None) -> dict[str, Any] | None:
    """A custom signal's ``--payload`` as a JSON object (USAGE_ERROR otherwise); None for a
    built-in action, which takes no payload."""
    if action in ACTIONS:
        if text is not None:
            raise UsageError(f"`{action}` takes no --payload",
                             details={"hint": "--payload is the data of a custom signal"})
        return None
    validate_identifier("signal name", action)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        raise UsageError("--payload is not JSON",
                         details={"hint": "--payload '{\"rows\": 42}'"}) from None
    if not isinstance(data, dict):
        raise UsageError("--payload must be a JSON object",
                         details={"hint": "--payload '{\"rows\": 42}'"})
    return data


def signal_payload(options: SignalOptions) -> dict[str, Any]:
    """The signal payload for a CLI action (contract §6.1), or a custom signal's."""
    action = options.action
    if options.custom:
        if options.step_id:
            raise UsageError(f"custom signal `{action}` takes no step id",
                             details={"hint": f"dvt signal RUN {action} --payload JSON"})
        return {"name": action, "data": options.data or {}}
    if action in STEP_ACTIONS and not options.step_id:
        raise UsageError(f"`{action}` needs a step id", details={
            "hint": f"dvt signal RUN {action} STEP"})
    if action not in STEP_ACTIONS and options.step_id:
        raise UsageError(f"`{action}` takes no step id",
                         details={"hint": f"dvt signal RUN {action}"})
    payload: dict[str, Any] = {}
    if action in STEP_ACTIONS:
        payload["stepId"] = options.step_id
    if action in ("approve", "reject", "approve-run", "reject-run"):
        payload["decision"] = "reject" if action.startswith("reject") else "approve"
        if options.reason:
            payload["comment"] = options.reason
    elif action != "resume" and options.reason:
        payload["reason"] = options.reason
    return payload


async def send_signal(settings: Settings, options: SignalOptions) -> int:
    """Send a signal to a run through the engine that runs it; print the decision."""
    _identity_checked(settings)
    # Everything typed on the command line is checked here, with coded errors, before a
    # request model is built or anything is looked up.
    validate_identifier("run id", options.run_id)
    validate_identifier("actor", options.actor)
    if options.signal_id is not None:
        validate_identifier("signal id", options.signal_id)
    if options.step_id is not None:
        validate_identifier("step id", options.step_id)
    settings = resolve(settings)
    tenant = settings.identity.tenant
    request = SignalRequest(
        signal_id=options.signal_id or str(uuid.uuid4()),
        type=ACTIONS.get(options.action, SignalType.CUSTOM),
        tenant_id=tenant,
        run_id=options.run_id,
        payload=signal_payload(options),
        actor=Actor(id=options.actor, roles=options.roles),
    )
    async with store_session(settings) as store:
        header = await store.get_run(tenant, options.run_id)
        if header is None:
            raise _not_found(store, options.run_id)
        if header.engine == "reference":
            raise UsageError(
                f"run {options.run_id} runs on the in-process reference engine, inside the "
                "command that started it; only that process can steer it",
                details={"runId": options.run_id, "engine": header.engine,
                         "hint": "Use Temporal or Conductor for runs you steer from elsewhere."},
            )
        snapshot = await _snapshot(store, tenant, options.run_id)
        async with engine_session(header.engine, store, settings, worker=False) as engine:
            run_ref = _run_ref(engine, header, snapshot)
            decision = await engine.signal(run_ref, request)
    if settings.json:
        out.emit_json({"decision": decision.model_dump(mode="json")})
    else:
        verdict = "accepted" if decision.accepted else "rejected"
        extra = " (duplicate: first decision repeated)" if decision.duplicate else ""
        extra += " (no-op)" if decision.no_op else ""
        out.say(f"signal {decision.signal_id} {decision.type} {verdict}{extra}")
        if decision.error_code:
            out.say(f"  {decision.error_code}: {decision.message or ''}".rstrip())
        if decision.new_run_id:
            out.say(f"  new run {decision.new_run_id}")
    return out.EXIT_OK if decision.accepted else out.EXIT_REFUSED


def _run_ref(engine: Any, header: RunHeader, snapshot: RunSnapshot) -> EngineRunRef:
    if snapshot.engine_run_ref:
        try:
            ref: EngineRunRef = TypeAdapter(EngineRunRef).validate_python(snapshot.engine_run_ref)
            return ref
        except ValidationError:
            pass
    maker = getattr(engine, "run_ref_for", None)
    if maker is None:
        raise UsageError(f"run {header.run_id} has no engine reference yet",
                         details={"hint": "Wait until the run has started."})
    made: EngineRunRef = maker(header)
    return made


def print_run_list(rows: Sequence[RunSummary], *, as_json: bool) -> int:
    """Print `dvt runs` output (one line per run, or the JSON document); local and remote."""
    if as_json:
        out.emit_json({"runs": [r.model_dump(mode="json") for r in rows]})
        return out.EXIT_OK
    if not rows:
        out.say("no runs")
    for r in rows:
        status = str(r.status) + (f" ({r.substatus})" if r.substatus else "")
        shown = "".join(f"  {k}:{v}" for k, v in r.labels.items())
        out.say(f"{r.run_id}  {status:<10}  {r.plan_id}@{r.plan_version}  {r.engine}  "
                f"{r.created_at.isoformat(timespec='seconds')}{shown}")
    return out.EXIT_OK
