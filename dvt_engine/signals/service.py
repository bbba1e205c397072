"""The signal service every engine shares: contract §6.2, in one place.

``decide`` validates a signal, finds its run for the caller's tenant, answers a repeated
signalId with the first decision, applies the rate limit, asks the authorizer, checks the run's
state against the run's desired state (the log, with accepted signals not yet applied folded
in), and appends the decision record, only if the run is still at the runSeq it decided on,
BEFORE it hands an accepted signal to the engine. The engine then applies only what
``SignalVerdict.accepted`` carries, in decision order. See docs/signals.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from dvt_engine import telemetry
from dvt_engine.errors import ErrorCode, RunNotFound, SchemaValidationFailed, StoreUnavailable
from dvt_engine.eventlog import EventFactory, utc_now
from dvt_engine.idempotency import signal_key
from dvt_engine.models.events import Event, EventType, SignalDecisionPayload
from dvt_engine.models.plan import ExecutionPlan
from dvt_engine.models.run import RunHeader, StepStatus
from dvt_engine.models.signals import (
    AcceptedSignal,
    Role,
    SignalDecision,
    SignalRequest,
    SignalType,
)
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.ports import AuthorizationRequest, Authorizer, RunStateStore
from dvt_engine.rules.failure import final_failures
from dvt_engine.rules.signals import waiting_step
from dvt_engine.signals.authz import RoleBasedAuthorizer
from dvt_engine.signals.custom import (
    PlanSource,
    RunPlans,
    check_data,
    declaration,
    required_roles,
)
from dvt_engine.signals.desired import DesiredState, basis_of, desired_state
from dvt_engine.signals.logview import LogViews
from dvt_engine.signals.payloads import dump_payload, validate_envelope, validate_payload
from dvt_engine.signals.ratelimit import SlidingWindowLimiter
from dvt_engine.signals.retry_run import new_run_context, retry_run_id
from dvt_engine.signals.rules import check_state

RATE_LIMIT_CAPABILITY = "signals.rate.limit"
EMITTED_BY = "operator"
#: How often a decision is taken again because the run moved on before it was recorded.
DECISION_ATTEMPTS = 200

__all__ = [
    "EMITTED_BY",
    "RATE_LIMIT_CAPABILITY",
    "AcceptedSignal",
    "SignalService",
    "SignalVerdict",
    "decision_from_record",
    "new_run_context",
]

_log = logging.getLogger("dvt_engine.signals")
SPAN_DECIDE = "dvt.signal.decide"


@dataclass(frozen=True)
class SignalVerdict:
    """The answer to a signal, and what the engine must do about it.

    ``accepted`` is set only for a new accepted signal that is not a no-op. ``snapshot`` is the
    snapshot the decision was taken against (for a duplicate: the current one).
    """

    decision: SignalDecision
    accepted: AcceptedSignal | None
    header: RunHeader
    snapshot: RunSnapshot


class SignalService:
    """Decides signals for any engine: validated, authorized, state-checked and recorded."""

    def __init__(
        self,
        store: RunStateStore,
        authorizer: Authorizer | None = None,
        clock: Callable[[], datetime] = utc_now,
        rate_limit_per_minute: int | None = 60,
        plans: PlanSource | None = None,
    ) -> None:
        self.store = store
        #: Run plans, read for CUSTOM signals and for runs with a failed step (``plans``: an
        #: engine's loader, else the store's plan registry).
        self.plans = RunPlans(store, plans)
        self.authorizer: Authorizer = authorizer or RoleBasedAuthorizer()
        self.clock = clock
        self.views = LogViews(store)
        self.limiter = (
            SlidingWindowLimiter(rate_limit_per_minute, clock)
            if rate_limit_per_minute is not None
            else None
        )

    async def decide(
        self, request: SignalRequest, *, capabilities: frozenset[str] = frozenset()
    ) -> SignalVerdict:
        """Decide ``request`` (contract §6.2); raise only for rules 1-2, return a verdict else."""
        attributes: dict[str, str | None] = {
            telemetry.ATTR_TENANT_ID: request.tenant_id,
            telemetry.ATTR_RUN_ID: request.run_id,
            telemetry.ATTR_SIGNAL_ID: request.signal_id,
            telemetry.ATTR_SIGNAL_TYPE: str(request.type),
        }
        # A child of the engine's dvt.signal span: identity and outcome only, never payloads.
        with telemetry.dvt_span(SPAN_DECIDE, attributes=attributes) as span:
            verdict = await self._decide(request, capabilities)
            d = verdict.decision
            span.set_attribute(telemetry.ATTR_OUTCOME, "accepted" if d.accepted else "rejected")
            if d.error_code:
                span.set_attribute(telemetry.ATTR_ERROR_CODE, d.error_code)
            span.set_attribute(telemetry.ATTR_DUPLICATE, d.duplicate)
            if d.run_seq is not None:
                span.set_attribute(telemetry.ATTR_RUN_SEQ, d.run_seq)
            return verdict

    async def _decide(self, request: SignalRequest, capabilities: frozenset[str]) -> SignalVerdict:
        # Rule 1: nothing is looked up or recorded for a malformed signal.
        validate_envelope(request)
        payload_model = validate_payload(request)
        payload = dump_payload(payload_model)

        # Rule 2: the store's reads are tenant-scoped, so another tenant's run is simply absent.
        header, snapshot = await self._find_run(request)

        # A custom signal's type and data are checked against the run's plan as rule 1 checks
        # a built-in payload: refused, never recorded (the plan never changes, so a repeated
        # signalId gets the same answer).
        plan: ExecutionPlan | None = None
        declared: tuple[Role, ...] = ()
        if request.type == SignalType.CUSTOM:
            plan = await self.plans.of(header)
            name = str(payload["name"])
            decl = declaration(plan, name)
            check_data(name, decl, payload.get("data") or {})
            declared = required_roles(decl)

        # Rule 6 before the others: a repeated signalId gets the first decision and nothing else.
        key = signal_key(request.tenant_id, request.run_id, request.signal_id)
        existing = await self.store.get_event_by_key(request.tenant_id, request.run_id, key)
        if existing is not None:
            return SignalVerdict(decision_from_record(existing), None, header, snapshot)

        if (
            self.limiter is not None
            and RATE_LIMIT_CAPABILITY in capabilities
            and not self.limiter.try_admit((request.tenant_id, request.run_id))
        ):
            return self._rate_limited(request, header, snapshot)

        auth = await self.authorizer.authorize(
            AuthorizationRequest(
                actor=request.actor,
                signal_type=request.type,
                tenant_id=header.tenant_id,
                project_id=header.project_id,
                environment_id=header.environment_id,
                run_id=header.run_id,
                payload=payload,
                declared_roles=declared,
            )
        )
        # Rule 4 on the truth: the log up to runSeq N with every accepted, not yet applied
        # signal folded in, and the decision recorded at N+1 or not at all (then decided again
        # on the longer log). Two signals that conflict are thereby decided one after the other.
        for _ in range(DECISION_ATTEMPTS):
            view = await self.views.current(header)
            found = view.find(key)
            if found is not None:
                return SignalVerdict(decision_from_record(found), None, header, view.snapshot)
            desired = desired_state(view.snapshot, view.events)
            target = payload
            if request.type == SignalType.CUSTOM:
                assert plan is not None
                target = {**payload, "stepId": payload.get("stepId") or waiting_step(
                    plan, desired.snapshot, str(payload["name"]))}
                if target["stepId"] is None:
                    del target["stepId"]
            record = _Record(request, target, key, header, view.snapshot, view.last_seq,
                             desired)
            if not auth.allowed:
                verdict = await self._record(
                    record,
                    error_code=ErrorCode.SIGNAL_UNAUTHORIZED,
                    message=auth.reason or f"not allowed to send {request.type}",
                    effective_role=None,
                )
            else:
                state = check_state(
                    header,
                    desired.snapshot,
                    request.type,
                    step_id=target.get("stepId"),
                    approve=payload.get("decision", "approve") == "approve",
                    cancel_seq=desired.cancel_seq,
                    plan=plan,
                    signal_name=payload.get("name"),
                    retried_as=_retried_as(desired),
                )
                verdict = await self._record(
                    record,
                    error_code=state.error_code,
                    message=_with_pending(state.message, desired),
                    effective_role=auth.effective_role,
                    no_op=state.no_op,
                )
            if verdict is not None:
                return verdict
        raise StoreUnavailable(
            f"run {request.run_id!r} changed under {DECISION_ATTEMPTS} attempts to decide "
            f"signal {request.signal_id!r}; retry the same signalId",
            details={"runId": request.run_id, "signalId": request.signal_id},
        )

    async def _find_run(self, request: SignalRequest) -> tuple[RunHeader, RunSnapshot]:
        header = await self.store.get_run(request.tenant_id, request.run_id)
        snapshot = (
            await self.store.get_snapshot(request.tenant_id, request.run_id)
            if header is not None
            else None
        )
        if header is None or snapshot is None:
            # Unknown run and another tenant's run look the same to the caller (contract §6.2
            # rule 2): same message, same details, no tenant data.
            _log.info(
                "signal %s refused: run %r not visible to the signal's tenant "
                "(RUN_NOT_FOUND or TENANT_MISMATCH)",
                request.signal_id,
                request.run_id,
            )
            raise RunNotFound(f"run {request.run_id!r} not found",
                              details={"runId": request.run_id})
        return header, snapshot

    def _rate_limited(
        self, request: SignalRequest, header: RunHeader, snapshot: RunSnapshot
    ) -> SignalVerdict:
        assert self.limiter is not None
        wait = self.limiter.retry_after((request.tenant_id, request.run_id))
        decision = SignalDecision(
            signal_id=request.signal_id,
            type=request.type,
            run_id=request.run_id,
            accepted=False,
            error_code=str(ErrorCode.SIGNAL_RATE_LIMITED),
            message=(
                f"this run already had {self.limiter.limit} signals within the last minute; "
                f"retry the same signalId in {max(1, round(wait))}s"
            ),
        )
        _log.warning("signal %s on run %r rate limited", request.signal_id, request.run_id)
        return SignalVerdict(decision, None, header, snapshot)

    async def _record(
        self,
        record: _Record,
        *,
        error_code: ErrorCode | None,
        message: str | None,
        effective_role: Role | None,
        no_op: bool = False,
    ) -> SignalVerdict | None:
        """Record the decision at runSeq N+1; None when the run moved past N meanwhile."""
        request = record.request
        accepted = error_code is None
        body = SignalDecisionPayload(
            signal_id=request.signal_id,
            signal_type=request.type,
            step_id=record.payload.get("stepId"),
            actor=request.actor,
            effective_role=effective_role,
            reason=_reason(record.payload),
            error_code=None if error_code is None else str(error_code),
            message=message,
            no_op=no_op,
            request=record.payload,
            basis=basis_of(record.desired.snapshot, request.type, record.payload.get("stepId"))
            if accepted and not no_op else None,
        ).model_dump(mode="json", by_alias=True)
        if body["basis"] is None:
            del body["basis"]  # refusals and no-ops keep the record's earlier shape
        event_type = EventType.SIGNAL_ACCEPTED if accepted else EventType.SIGNAL_REJECTED
        event = EventFactory(record.header, EMITTED_BY, self.clock).signal_event(
            event_type, record.key, body
        )
        result = await self.store.append_if_last(event, record.last_seq)
        if result is None:
            return None
        if result.duplicate:
            # A concurrent request with the same signalId won the race: its decision stands.
            stored = await self.store.get_event_by_key(
                request.tenant_id, request.run_id, record.key
            )
            if stored is None:  # pragma: no cover - the store just said it holds the key
                raise RunNotFound(f"run {request.run_id!r} not found",
                                  details={"runId": request.run_id})
            return SignalVerdict(decision_from_record(stored), None, record.header,
                                 record.snapshot)
        persisted = event.model_copy(
            update={"run_seq": result.run_seq, "persisted_at": result.persisted_at}
        )
        decision = decision_from_record(persisted, duplicate=False)
        _log.info(
            "signal %s %s on run %r: %s", request.signal_id, request.type, request.run_id,
            "accepted" + (" (no-op)" if no_op else "") if accepted else error_code,
        )
        applied = None
        if accepted and not no_op:
            basis = basis_of(record.desired.snapshot, request.type, record.payload.get("stepId"))
            applied = AcceptedSignal(
                signal_id=request.signal_id,
                type=request.type,
                tenant_id=request.tenant_id,
                run_id=request.run_id,
                payload=record.payload,
                actor=request.actor,
                effective_role=effective_role,
                decision_run_seq=result.run_seq,
                logical_attempt_id=basis.logical_attempt_id,
                previous_signal_seq=record.desired.last_signal_seq,
                failed_steps=await self._failed_steps(record),
            )
        return SignalVerdict(decision, applied, record.header, record.snapshot)

    async def _failed_steps(self, record: _Record) -> dict[str, int]:
        """The final step failures the log showed when the signal was decided."""
        if not any(step.status == StepStatus.FAILED for step in record.snapshot.steps):
            return {}  # the common case: nothing failed, no plan to read
        try:
            plan: ExecutionPlan | None = await self.plans.of(record.header)
        except Exception as exc:
            # The decision is recorded already: a plan that cannot be read now (not in the
            # registry, its loader failing) must not keep the engine from applying it. Without
            # the plan's retry policies only unretryable errors count as final.
            _log.warning("plan of run %r unreadable for a signal: %s", record.header.run_id,
                         type(exc).__name__)
            plan = None
        return final_failures(plan, record.snapshot.steps)


@dataclass(frozen=True)
class _Record:
    request: SignalRequest
    payload: dict[str, Any]
    key: str
    header: RunHeader
    snapshot: RunSnapshot
    last_seq: int
    desired: DesiredState


def _with_pending(message: str | None, desired: DesiredState) -> str | None:
    """A refusal or no-op message that says when accepted, unapplied signals shaped it."""
    if message is None or not desired.pending:
        return message
    seqs = ", ".join(str(p.decision_run_seq) for p in desired.pending)
    return f"{message} (counting the signals accepted at runSeq {seqs}, not yet applied)"


def decision_from_record(event: Event, *, duplicate: bool = True) -> SignalDecision:
    """Rebuild the decision a SignalAccepted/SignalRejected record holds."""
    try:
        body = SignalDecisionPayload.model_validate(event.payload)
    except ValidationError as exc:
        raise SchemaValidationFailed(
            f"the decision record at runSeq {event.run_seq} cannot be read",
            details={"runId": event.run_id, "runSeq": event.run_seq,
                     "eventType": event.event_type},
        ) from exc
    accepted = event.event_type == EventType.SIGNAL_ACCEPTED
    new_run_id = None
    if accepted and not body.no_op and body.signal_type == SignalType.RETRY_RUN:
        new_run_id = retry_run_id(event.tenant_id, event.run_id, body.signal_id, body.request)
    return SignalDecision(
        signal_id=body.signal_id,
        type=body.signal_type,
        run_id=event.run_id,
        accepted=accepted,
        duplicate=duplicate,
        no_op=body.no_op,
        effective_role=body.effective_role,
        error_code=body.error_code,
        message=body.message,
        run_seq=event.run_seq,
        new_run_id=new_run_id,
    )


def _retried_as(desired: DesiredState) -> str | None:
    """The runId the run's accepted RETRY_RUN started, if it was retried already."""
    first = desired.retried_by
    if first is None:
        return None
    return retry_run_id(first.tenant_id, first.run_id, first.signal_id, first.payload)


def _reason(payload: dict[str, Any]) -> str | None:
    for name in ("reason", "comment"):
        value = payload.get(name)
        if isinstance(value, str):
            return value
    return None
