"""The shared signal service: decision records, RETRY_RUN, rejection errors and tracing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from signal_helpers import (
    TENANT,
    _terminal,
    make_header,
    new_run,
    request,
)

from dvt_engine.errors import (
    DvtError,
    ErrorCode,
    IllegalTransition,
    RunAlreadyRetried,
    RunNotFound,
    RunTerminal,
    SchemaValidationFailed,
    SignalRateLimited,
    SignalUnauthorized,
    StepNotAwaitingApproval,
    StepNotFound,
    StepNotRetryable,
    StepTerminal,
    UsageError,
)
from dvt_engine.eventlog import EventFactory
from dvt_engine.idempotency import signal_key
from dvt_engine.models.events import EventType
from dvt_engine.models.run import RunStatus
from dvt_engine.models.signals import (
    ApproveStepPayload,
    Role,
    SignalDecision,
    SignalType,
)
from dvt_engine.signals import (
    AcceptedSignal,
    SignalService,
    decision_from_record,
    new_run_context,
    raise_for_rejection,
)
from dvt_engine.stores.memory import MemoryRunStateStore


@pytest.fixture
def store() -> MemoryRunStateStore:
    return MemoryRunStateStore()


@pytest.fixture
def service(store: MemoryRunStateStore) -> SignalService:
    return SignalService(store)


# --- rule 5: the record -----------------------------------------------------------------------


async def test_record_is_written_before_the_accepted_signal_is_returned(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    await run.fail_step("a")
    req = request(run, SignalType.SKIP_STEP, {"stepId": "a", "reason": "flaky"})
    verdict = await service.decide(req)
    accepted = verdict.accepted
    assert accepted is not None
    key = signal_key(TENANT, run.run_id, req.signal_id)
    record = await store.get_event_by_key(TENANT, run.run_id, key)
    assert record is not None
    assert record.run_seq == accepted.decision_run_seq
    assert record.event_type == EventType.SIGNAL_ACCEPTED
    assert record.emitted_by == "operator"
    assert record.step_id is None
    assert record.caused_by_signal_id == req.signal_id
    assert record.payload == {
        "signalId": req.signal_id, "signalType": "SKIP_STEP", "stepId": "a",
        "actor": {"id": "alice", "roles": ["admin", "approver"]}, "effectiveRole": "admin",
        "reason": "flaky", "errorCode": None, "message": None, "noOp": False,
        "request": {"stepId": "a", "reason": "flaky"},
        "basis": {"runStatus": "RUNNING", "stepStatus": "FAILED", "stepSubstatus": None,
                  "logicalAttemptId": 1},
    }
    assert decision_from_record(record, duplicate=False) == verdict.decision
    assert accepted.step_id == "a"


async def test_accepted_signal_is_json_safe(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    await run.await_gate()
    verdict = await service.decide(request(
        run, SignalType.APPROVE_STEP, {"step_id": "gate", "decision": "approve", "comment": "ok"},
        roles=(Role.APPROVER,)))
    accepted = verdict.accepted
    assert accepted is not None
    data = accepted.model_dump(mode="json")
    assert data["payload"] == {"stepId": "gate", "decision": "approve", "comment": "ok"}
    assert data["decisionRunSeq"] == verdict.decision.run_seq
    assert data["effectiveRole"] == "approver"
    assert AcceptedSignal.model_validate_json(accepted.model_dump_json()) == accepted
    typed = accepted.typed_payload()
    assert isinstance(typed, ApproveStepPayload)
    assert typed.decision == "approve"


def test_unreadable_decision_record_is_a_coded_error() -> None:
    header = make_header("r-corrupt")
    event = EventFactory(header, "operator").signal_event(
        "SignalAccepted", signal_key(TENANT, "r-corrupt", "s"), {"signalId": "s"}
    ).model_copy(update={"run_seq": 3, "persisted_at": datetime.now(UTC)})
    with pytest.raises(SchemaValidationFailed) as info:
        decision_from_record(event)
    assert info.value.details["runSeq"] == 3


# --- RETRY_RUN --------------------------------------------------------------------------------


async def test_retry_run_context_is_deterministic(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await new_run(store)
    await _terminal(EventType.RUN_FAILED, run)
    verdict = await service.decide(request(run, SignalType.RETRY_RUN, signal_id="again",
                                           roles=(Role.ENGINEER,), actor_id="eve"))
    accepted = verdict.accepted
    assert accepted is not None
    ctx = new_run_context(verdict.header, accepted)
    assert ctx.run_id == verdict.decision.new_run_id
    assert ctx.run_id != run.run_id
    assert ctx.original_run_id == run.run_id
    assert (ctx.tenant_id, ctx.project_id, ctx.environment_id) == (TENANT, "proj", "env")
    assert ctx.triggered_by == "eve"
    assert ctx.params == {"date": "2026-11-21"}
    assert ctx.labels == {"team": "data"}
    assert ctx.run_request_id is not None
    assert signal_key(TENANT, run.run_id, "again") in ctx.run_request_id
    assert new_run_context(verdict.header, accepted) == ctx
    dup = await service.decide(request(run, SignalType.RETRY_RUN, signal_id="again"))
    assert dup.accepted is None
    assert dup.decision.new_run_id == ctx.run_id
    # The old run is untouched except for its decision record.
    snap = await store.get_snapshot(TENANT, run.run_id)
    assert snap is not None
    assert snap.status == RunStatus.FAILED


async def test_retry_run_ids_do_not_collide_across_runs(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    contexts = []
    for _ in range(2):
        run = await new_run(store)
        await _terminal(EventType.RUN_CANCELLED, run)
        v = await service.decide(request(run, SignalType.RETRY_RUN, signal_id="retry-1"))
        assert v.accepted is not None
        contexts.append(new_run_context(v.header, v.accepted))
    assert contexts[0].run_id != contexts[1].run_id
    assert contexts[0].run_request_id != contexts[1].run_request_id


async def test_retry_run_honours_new_run_id(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await new_run(store)
    await _terminal(EventType.RUN_FAILED, run)
    v = await service.decide(request(run, SignalType.RETRY_RUN, {"newRunId": "chosen-id"}))
    assert v.accepted is not None
    assert v.decision.new_run_id == "chosen-id"
    assert new_run_context(v.header, v.accepted).run_id == "chosen-id"


async def test_a_run_is_retried_once_and_a_later_retry_names_the_first(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await new_run(store)
    await _terminal(EventType.RUN_FAILED, run)
    first = await service.decide(request(run, SignalType.RETRY_RUN, signal_id="one",
                                         roles=(Role.ENGINEER,)))
    assert first.accepted is not None
    second = await service.decide(request(run, SignalType.RETRY_RUN, {"newRunId": "other"},
                                          signal_id="two", roles=(Role.ENGINEER,)))
    assert second.accepted is None
    assert second.decision.error_code == ErrorCode.RUN_ALREADY_RETRIED
    assert second.decision.new_run_id is None
    assert repr(first.decision.new_run_id) in (second.decision.message or "")
    with pytest.raises(RunAlreadyRetried):
        raise_for_rejection(second.decision)
    # The refusal is recorded; the first retry's duplicate still answers with its run.
    events = await store.fetch_events(TENANT, run.run_id)
    assert [e.event_type for e in events[-2:]] == [EventType.SIGNAL_ACCEPTED,
                                                   EventType.SIGNAL_REJECTED]
    again = await service.decide(request(run, SignalType.RETRY_RUN, signal_id="one"))
    assert again.decision.accepted
    assert again.decision.new_run_id == first.decision.new_run_id


async def test_concurrent_retries_of_one_run_accept_exactly_one(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await new_run(store)
    await _terminal(EventType.RUN_CANCELLED, run)
    verdicts = await asyncio.gather(*(
        service.decide(request(run, SignalType.RETRY_RUN, signal_id=f"r-{i}",
                               roles=(Role.ENGINEER,)))
        for i in range(8)))
    accepted = [v for v in verdicts if v.accepted is not None]
    assert len(accepted) == 1
    assert {v.decision.error_code for v in verdicts if v.accepted is None} == \
        {ErrorCode.RUN_ALREADY_RETRIED}


async def test_new_run_context_refuses_other_signals(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    v = await service.decide(request(run, SignalType.PAUSE))
    assert v.accepted is not None
    with pytest.raises(UsageError):
        new_run_context(v.header, v.accepted)
    other = make_header("elsewhere")
    retry = v.accepted.model_copy(update={"type": SignalType.RETRY_RUN})
    with pytest.raises(UsageError):
        new_run_context(other, retry)


# --- raise_for_rejection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls"),
    [(ErrorCode.SIGNAL_UNAUTHORIZED, SignalUnauthorized), (ErrorCode.RUN_TERMINAL, RunTerminal),
     (ErrorCode.STEP_NOT_RETRYABLE, StepNotRetryable), (ErrorCode.STEP_TERMINAL, StepTerminal),
     (ErrorCode.STEP_NOT_FOUND, StepNotFound),
     (ErrorCode.STEP_NOT_AWAITING_APPROVAL, StepNotAwaitingApproval),
     (ErrorCode.ILLEGAL_TRANSITION, IllegalTransition),
     (ErrorCode.SIGNAL_RATE_LIMITED, SignalRateLimited)],
)
def test_raise_for_rejection_maps_codes(code: ErrorCode, cls: type[DvtError]) -> None:
    decision = SignalDecision(signal_id="s", type=SignalType.PAUSE, run_id="r", accepted=False,
                              error_code=code, message="refused", run_seq=7)
    with pytest.raises(cls) as info:
        raise_for_rejection(decision)
    assert info.value.details["signalId"] == "s"
    assert info.value.details["recorded"] is True
    accepted = decision.model_copy(update={"accepted": True, "error_code": None})
    assert raise_for_rejection(accepted) is accepted


def test_raise_for_rejection_unknown_code_is_still_coded() -> None:
    decision = SignalDecision(signal_id="s", type=SignalType.PAUSE, run_id="r", accepted=False,
                              error_code="FROM_THE_FUTURE")
    with pytest.raises(UsageError, match="FROM_THE_FUTURE"):
        raise_for_rejection(decision)


# --- tracing ----------------------------------------------------------------------------------


async def test_decide_spans_carry_identity_and_outcome_not_payload(
    store: MemoryRunStateStore, service: SignalService, spans: InMemorySpanExporter
) -> None:
    run = await (await new_run(store)).start()
    await service.decide(request(run, SignalType.PAUSE, {"reason": "secret-ish reason"},
                                 signal_id="traced"))
    with pytest.raises(RunNotFound):
        await service.decide(request("ghost", SignalType.PAUSE))
    ok, missing = [sp for sp in spans.get_finished_spans() if sp.name == "dvt.signal.decide"]
    attrs = dict(ok.attributes or {})
    assert attrs["dvt.signal_id"] == "traced"
    assert attrs["dvt.run_id"] == run.run_id
    assert attrs["dvt.outcome"] == "accepted"
    assert attrs["dvt.duplicate"] is False
    assert "secret-ish reason" not in repr(attrs)
    assert dict(missing.attributes or {})["dvt.error_code"] == "RUN_NOT_FOUND"
