"""Remote mode: `dvt --api URL` runs run, validate, status, events, runs and signal through
the HTTP service (dvt_client) instead of a store and an engine of its own.

Output and exit codes are those of local mode: answers are turned back into the core's models
and printed by the same functions. The tenant is the API key's; --tenant, --store and the
engine addresses do not apply. Refusals keep the service's stable code.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from dvt_cli import dag
from dvt_cli import output as out
from dvt_cli.plans import read_plan_bytes
from dvt_cli.runs import (
    STEP_ACTIONS,
    RunOptions,
    RunQuery,
    SignalOptions,
    approval_notice,
    event_printer,
    exit_code_for,
    print_dag,
    print_report,
    print_run_list,
)
from dvt_client import ApiError, AsyncClient, ConnectionFailed
from dvt_client import Run as ApiRun
from dvt_client import RunEvent as ApiEvent
from dvt_engine.errors import (
    ERROR_CLASSES,
    ApiUnavailable,
    DvtError,
    ErrorCode,
    RunNotFound,
    UsageError,
)
from dvt_engine.identifiers import validate_identifier
from dvt_engine.labels import parse_label_pairs
from dvt_engine.models.events import TERMINAL_RUN_EVENTS, Event
from dvt_engine.models.run import RunSummary
from dvt_engine.models.signals import SignalDecision, SignalType
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.models.validation import ValidationReport
from dvt_engine.planning.document import load_document

T = TypeVar("T")

#: `dvt signal` actions and the service's signal types (the service has no run retry or
#: run rejection).
API_SIGNALS = {"pause": "PAUSE", "resume": "RESUME", "cancel": "CANCEL",
               "retry-step": "RETRY_STEP", "skip-step": "SKIP_STEP", "approve": "APPROVE_STEP",
               "reject": "REJECT_STEP", "approve-run": "APPROVE_RUN"}


@dataclass(frozen=True)
class Remote:
    """Where the service is and the key to use."""

    url: str
    key: str | None
    json: bool = False


class ApiRefusal(DvtError):
    """A refusal with one of the HTTP layer's own codes (UNAUTHENTICATED, FORBIDDEN, ...)."""

    code = ErrorCode.USAGE_ERROR


@functools.cache
def _refusal_class(code: str) -> type[DvtError]:
    """The core's class for a core code; otherwise a class carrying the service's code."""
    try:
        return ERROR_CLASSES[ErrorCode(code)]
    except (ValueError, KeyError):
        made: type[DvtError] = type(f"Api_{code}", (ApiRefusal,), {"code": code})
        return made


def as_dvt_error(error: ApiError | ConnectionFailed, run_id: str | None = None) -> DvtError:
    """A client error as the CLI's coded error (same code, message and failing paths)."""
    if isinstance(error, ConnectionFailed):
        return ApiUnavailable(str(error))
    details: dict[str, Any] = {"status": error.status, "requestId": error.request_id}
    if error.code == "RUN_NOT_FOUND" and run_id is not None:
        # The service does not echo the id it was given; local mode names it, and so do we.
        return RunNotFound(f"run {run_id!r} not found", details={
            **details, "runId": run_id,
            "hint": "Check the run id and that the API key is one of the run's tenant."})
    if error.errors:
        details["errors"] = [e.model_dump() for e in error.errors]
    if error.code == "UNAUTHENTICATED":
        details["hint"] = "Set DVT_API_KEY (or --api-key) to a key of the tenant."
    elif error.code == "FORBIDDEN":
        details["hint"] = "The key lacks the role this needs; ask an admin for one that has it."
    return _refusal_class(error.code)(error.detail, details=details)


@asynccontextmanager
async def _client(remote: Remote, run_id: str | None = None) -> AsyncIterator[AsyncClient]:
    """A client of the service; its errors become coded errors (about ``run_id`` if given)."""
    try:
        async with AsyncClient(remote.url, remote.key) as client:
            yield client
    except (ApiError, ConnectionFailed) as exc:
        raise as_dvt_error(exc, run_id) from None


def command(body: Callable[..., Awaitable[int]]) -> Callable[..., Awaitable[int]]:
    """A remote command body: client errors become the CLI's coded errors."""
    @functools.wraps(body)
    async def wrapped(*args: Any, **kw: Any) -> int:
        try:
            return await body(*args, **kw)
        except (ApiError, ConnectionFailed) as exc:
            raise as_dvt_error(exc) from None
    return wrapped


def snapshot_of(run: ApiRun) -> RunSnapshot:
    """The core's snapshot of a run the service answered (its extra fields dropped)."""
    return RunSnapshot.model_validate(run.model_dump(mode="json", by_alias=True))


def event_of(event: ApiEvent) -> Event:
    """The core's envelope of an event the service sent."""
    return Event.model_validate(event.model_dump(mode="json", by_alias=True))


def _show_run(run: ApiRun, as_json: bool) -> RunSnapshot:
    snapshot = snapshot_of(run)
    if as_json:
        out.emit_json(out.run_document(snapshot))
    else:
        out.print_snapshot(snapshot)
    return snapshot


@command
async def run_plan(remote: Remote, options: RunOptions, engine: str | None) -> int:
    """`dvt run` through the service: store the plan, start it, follow it to its end."""
    data = read_plan_bytes(options.plan_path)
    if options.run_id is not None:
        validate_identifier("run id", options.run_id)
    if options.request_id is not None:
        validate_identifier("request id", options.request_id)
    labels = parse_label_pairs(options.labels, path="--label")
    async with _client(remote) as dvt:
        ref = await dvt.plans.store(data)
        # --request-id is the Idempotency-Key: repeating it answers the first run again.
        run = await dvt.runs.create(plan_ref=ref, run_id=options.run_id, labels=labels or None,
                                    engine=engine, idempotency_key=options.request_id)
        if not remote.json:
            out.say(f"run {run.run_id} started on {run.engine} "
                    f"(plan {run.plan_id}@{run.plan_version}, {ref.uri})")
            if _requires_approval(data):
                out.say(approval_notice(run.run_id))
            out.flush()
        if options.detach:
            if remote.json:
                _show_run(run, True)
            return out.EXIT_OK
        with event_printer(snapshot_of(run), remote.json, options.live) as emit:
            async for event in dvt.runs.stream(run.run_id):
                if not remote.json:
                    emit(event_of(event))
        final = await dvt.runs.get(run.run_id)
    snapshot = _show_run(final, remote.json)
    return exit_code_for(snapshot.status)


def _requires_approval(data: bytes) -> bool:
    """Whether the plan (accepted by the service, so a valid document) waits for APPROVE_RUN."""
    doc, _ = load_document(data)
    metadata = doc.get("metadata") if isinstance(doc, dict) else None
    return isinstance(metadata, dict) and metadata.get("requiresApproval") is True


@command
async def validate_plan(remote: Remote, plan_path: str, engine: str | None) -> int:
    """`dvt validate` by the service's engine (or ``engine``)."""
    data = read_plan_bytes(plan_path)
    async with _client(remote) as dvt:
        answer = await dvt.plans.validate(data, engine=engine)
    report = ValidationReport.model_validate(answer.model_dump(mode="json", by_alias=True))
    return print_report(report, plan_path, remote.json)


@command
async def show_status(remote: Remote, run_id: str, with_dag: bool = False) -> int:
    """`dvt status [--dag]` from the service; the DAG's plan is the run's planRef."""
    validate_identifier("run id", run_id)
    async with _client(remote, run_id) as dvt:
        run = await dvt.runs.get(run_id)
        if with_dag:
            sha256 = str(((run.model_extra or {}).get("planRef") or {}).get("sha256") or "")
            if not sha256:
                raise UsageError(f"the service sent no planRef for run {run_id}",
                                 details={"runId": run_id,
                                          "hint": "run `dvt status` without --dag"})
            plan = await dvt.plans.get(sha256)
    if not with_dag:
        _show_run(run, remote.json)
        return out.EXIT_OK
    snapshot = snapshot_of(run)
    print_dag(snapshot, dag.layered(dag.outline_of_plan(plan), snapshot), remote.json)
    return out.EXIT_OK


@command
async def show_events(remote: Remote, run_id: str, follow: bool, until: str | None,
                      live: bool = False) -> int:
    """`dvt events [-f] [--until TYPE]` from the service: stored events, then the stream."""
    validate_identifier("run id", run_id)
    async with _client(remote, run_id) as dvt:
        run = await dvt.runs.get(run_id)  # RUN_NOT_FOUND before anything is printed
        shown = live and (follow or until is not None)
        with event_printer(snapshot_of(run), remote.json, shown) as emit:
            last, ended = 0, False
            async for api_event in dvt.runs.events(run_id, page_size=1000):
                event = event_of(api_event)
                emit(event)
                last = event.run_seq or last
                if until is not None and event.event_type == until:
                    return out.EXIT_OK
                ended = ended or event.event_type in TERMINAL_RUN_EVENTS
            if ended or not (follow or until is not None):
                return out.EXIT_OK
            async for api_event in dvt.runs.stream(run_id, after=last):
                event = event_of(api_event)
                emit(event)
                last = event.run_seq or last
                if until is not None and event.event_type == until:
                    return out.EXIT_OK
            # Decisions on signals that arrived after the end follow the terminal event.
            async for api_event in dvt.runs.events(run_id, after=last, page_size=1000):
                emit(event_of(api_event))
    return out.EXIT_OK


@command
async def list_runs(remote: Remote, query: RunQuery) -> int:
    """`dvt runs` from the service, newest first, at most ``query.limit``."""
    labels = parse_label_pairs(query.labels, path="--label")
    if query.plan_id is not None:
        validate_identifier("--plan", query.plan_id)
    rows: list[RunSummary] = []
    async with _client(remote) as dvt:
        async for run in dvt.runs.list(status=[s.upper() for s in query.statuses] or None,
                                       plan_id=query.plan_id, labels=labels or None,
                                       page_size=min(query.limit, 200)):
            rows.append(RunSummary.model_validate(run.model_dump(mode="json", by_alias=True)))
            if len(rows) >= query.limit:
                break
    return print_run_list(rows, as_json=remote.json)


async def send_signal(remote: Remote, options: SignalOptions) -> int:
    """`dvt signal` through the service; the key is the actor. Refusals print a decision."""
    validate_identifier("run id", options.run_id)
    for name, value in (("signal id", options.signal_id), ("step id", options.step_id)):
        if value is not None:
            validate_identifier(name, value)
    kind = "CUSTOM" if options.custom else API_SIGNALS.get(options.action)
    if kind is None:
        raise UsageError(f"the service has no `{options.action}` signal",
                         details={"hint": "send it without --api, against the store"})
    if options.custom and options.step_id is not None:
        raise UsageError(f"custom signal `{options.action}` takes no step id",
                         details={"hint": f"dvt signal RUN {options.action} --payload JSON"})
    if not options.custom and (options.action in STEP_ACTIONS) != (options.step_id is not None):
        need = "needs a step id" if options.action in STEP_ACTIONS else "takes no step id"
        raise UsageError(f"`{options.action}` {need}",
                         details={"hint": f"dvt signal RUN {options.action}"
                                          + (" STEP" if options.action in STEP_ACTIONS else "")})
    signal_id = options.signal_id or str(uuid.uuid4())
    decision: SignalDecision
    try:
        async with AsyncClient(remote.url, remote.key) as dvt:
            answer = await dvt.runs.signal(options.run_id, kind,  # type: ignore[arg-type]
                                           step_id=options.step_id, reason=options.reason,
                                           signal_id=signal_id,
                                           name=options.action if options.custom else None,
                                           payload=options.data if options.custom else None)
        decision = SignalDecision(signal_id=answer.signal_id, type=_core_type(kind),
                                  run_id=options.run_id, accepted=True,
                                  duplicate=answer.duplicate, no_op=answer.decision == "no_op",
                                  run_seq=answer.run_seq)
    except ApiError as exc:
        # A refusal of the signal itself is a decision (exit 2, printed like local mode); a
        # refusal of the request (no key, no run, no role) is an error.
        if exc.status not in (409, 422, 429) or exc.code in ("REQUEST_INVALID",
                                                             "IDEMPOTENCY_KEY_MISMATCH"):
            raise as_dvt_error(exc, options.run_id) from None
        decision = SignalDecision(signal_id=signal_id, type=_core_type(kind),
                                  run_id=options.run_id, accepted=False,
                                  error_code=exc.code, message=exc.detail)
    except ConnectionFailed as exc:
        raise as_dvt_error(exc) from None
    if remote.json:
        out.emit_json({"decision": decision.model_dump(mode="json")})
    else:
        verdict = "accepted" if decision.accepted else "rejected"
        extra = " (duplicate: first decision repeated)" if decision.duplicate else ""
        extra += " (no-op)" if decision.no_op else ""
        out.say(f"signal {decision.signal_id} {decision.type} {verdict}{extra}")
        if decision.error_code:
            out.say(f"  {decision.error_code}: {decision.message or ''}".rstrip())
    return out.EXIT_OK if decision.accepted else out.EXIT_REFUSED


def _core_type(kind: str) -> SignalType:
    """The core's signal type for a service signal type (approve and reject are one type)."""
    return SignalType.APPROVE_STEP if kind == "REJECT_STEP" else SignalType(kind)
