"""The shared signal service: the run-state rule (contract §6.2, rule 4) and hostile input."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from signal_helpers import (
    TENANT,
    Setup,
    _approved,
    _done_step,
    _failed_step,
    _gate,
    _gate_paused,
    _gate_started_only,
    _paused,
    _pending,
    _running,
    _running_step,
    _skipped_step,
    _terminal,
    new_run,
    request,
)

from dvt_engine.errors import (
    DvtError,
    ErrorCode,
    IdentifierInvalid,
    RunTerminal,
)
from dvt_engine.models.events import EventType
from dvt_engine.models.run import RunStatus, StepStatus, StepSubstatus
from dvt_engine.models.signals import (
    Role,
    SignalRequest,
    SignalType,
)
from dvt_engine.signals import (
    SignalService,
    SignalVerdict,
    parse_signal_request,
    raise_for_rejection,
)
from dvt_engine.stores.memory import MemoryRunStateStore


@pytest.fixture
def store() -> MemoryRunStateStore:
    return MemoryRunStateStore()


@pytest.fixture
def service(store: MemoryRunStateStore) -> SignalService:
    return SignalService(store)


OK = "accepted"
NOOP = "no-op"
S = SignalType

STATE_CASES: list[tuple[str, Setup, SignalType, dict[str, Any], str, bool]] = [
    # (name, setup, signal, payload, expected outcome, plan requires approval)
    ("pause running", _running, S.PAUSE, {}, OK, False),
    ("pause paused", _paused, S.PAUSE, {}, NOOP, False),
    ("pause pending", _pending, S.PAUSE, {}, ErrorCode.ILLEGAL_TRANSITION, False),
    ("resume paused", _paused, S.RESUME, {}, OK, False),
    ("resume running", _running, S.RESUME, {}, NOOP, False),
    ("resume approved", _approved, S.RESUME, {}, ErrorCode.ILLEGAL_TRANSITION, True),
    ("cancel pending", _pending, S.CANCEL, {}, OK, False),
    ("cancel paused", _paused, S.CANCEL, {}, OK, False),
    ("retry failed step", _failed_step, S.RETRY_STEP, {"stepId": "a"}, OK, False),
    ("retry pending step", _running, S.RETRY_STEP, {"stepId": "a"},
     ErrorCode.STEP_NOT_RETRYABLE, False),
    ("retry done step", _done_step, S.RETRY_STEP, {"stepId": "a"},
     ErrorCode.STEP_NOT_RETRYABLE, False),
    ("retry unknown step", _failed_step, S.RETRY_STEP, {"stepId": "zz"},
     ErrorCode.STEP_NOT_FOUND, False),
    ("skip pending step", _running, S.SKIP_STEP, {"stepId": "b"}, OK, False),
    ("skip failed step", _failed_step, S.SKIP_STEP, {"stepId": "a"}, OK, False),
    ("skip while paused", _paused, S.SKIP_STEP, {"stepId": "a"}, OK, False),
    ("skip done step", _done_step, S.SKIP_STEP, {"stepId": "a"}, ErrorCode.STEP_TERMINAL, False),
    ("skip skipped step", _skipped_step, S.SKIP_STEP, {"stepId": "a"},
     ErrorCode.STEP_TERMINAL, False),
    ("skip running step", _running_step, S.SKIP_STEP, {"stepId": "a"},
     ErrorCode.STEP_TERMINAL, False),
    ("skip waiting gate", _gate, S.SKIP_STEP, {"stepId": "gate"}, ErrorCode.STEP_TERMINAL, False),
    ("skip unknown step", _running, S.SKIP_STEP, {"stepId": "zz"}, ErrorCode.STEP_NOT_FOUND,
     False),
    ("skip before start", _pending, S.SKIP_STEP, {"stepId": "a"},
     ErrorCode.ILLEGAL_TRANSITION, False),
    ("approve gate", _gate, S.APPROVE_STEP, {"stepId": "gate", "decision": "approve"}, OK, False),
    ("reject gate", _gate, S.APPROVE_STEP, {"stepId": "gate", "decision": "reject"}, OK, False),
    ("approve gate while paused", _gate_paused, S.APPROVE_STEP,
     {"stepId": "gate", "decision": "approve"}, OK, False),
    ("approve gate not yet waiting", _gate_started_only, S.APPROVE_STEP,
     {"stepId": "gate", "decision": "approve"}, ErrorCode.STEP_NOT_AWAITING_APPROVAL, False),
    ("approve plain step", _running_step, S.APPROVE_STEP, {"stepId": "a", "decision": "approve"},
     ErrorCode.STEP_NOT_AWAITING_APPROVAL, False),
    ("approve unknown step", _gate, S.APPROVE_STEP, {"stepId": "zz", "decision": "approve"},
     ErrorCode.STEP_NOT_FOUND, False),
    ("approve run pending", _pending, S.APPROVE_RUN, {}, OK, True),
    ("reject run pending", _pending, S.APPROVE_RUN, {"decision": "reject"}, OK, True),
    ("approve run twice", _approved, S.APPROVE_RUN, {}, NOOP, True),
    ("reject approved run", _approved, S.APPROVE_RUN, {"decision": "reject"},
     ErrorCode.ILLEGAL_TRANSITION, True),
    ("approve run without gate", _pending, S.APPROVE_RUN, {}, ErrorCode.ILLEGAL_TRANSITION,
     False),
    ("approve started run", _running, S.APPROVE_RUN, {}, ErrorCode.ILLEGAL_TRANSITION, True),
    ("retry failed run", lambda r: _terminal(EventType.RUN_FAILED, r), S.RETRY_RUN, {}, OK,
     False),
    ("retry cancelled run", lambda r: _terminal(EventType.RUN_CANCELLED, r), S.RETRY_RUN,
     {"reason": "again"}, OK, False),
    ("retry completed run", lambda r: _terminal(EventType.RUN_COMPLETED, r), S.RETRY_RUN, {},
     ErrorCode.RUN_TERMINAL, False),
    ("retry running run", _running, S.RETRY_RUN, {}, ErrorCode.ILLEGAL_TRANSITION, False),
]


@pytest.mark.parametrize(
    ("setup", "signal_type", "payload", "expected", "requires_approval"),
    [pytest.param(*case[1:], id=case[0]) for case in STATE_CASES],
)
async def test_state_check(store: MemoryRunStateStore, service: SignalService, setup: Setup,
                           signal_type: SignalType, payload: dict[str, Any], expected: str,
                           requires_approval: bool) -> None:
    run = await new_run(store, requires_approval=requires_approval)
    await setup(run)
    before = await store.get_snapshot(TENANT, run.run_id)
    verdict = await service.decide(request(run, signal_type, payload))
    d = verdict.decision
    [record] = await run.decisions()
    assert verdict.snapshot == before
    assert record.run_seq == d.run_seq
    assert d.run_seq is not None
    if expected == OK:
        assert d.accepted
        assert not d.no_op
        assert d.error_code is None
        assert record.event_type == EventType.SIGNAL_ACCEPTED
        assert verdict.accepted is not None
        assert verdict.accepted.decision_run_seq == d.run_seq
        assert verdict.accepted.payload == record.payload["request"]
    elif expected == NOOP:
        assert d.accepted
        assert d.no_op
        assert verdict.accepted is None
        assert record.event_type == EventType.SIGNAL_ACCEPTED
        assert record.payload["noOp"] is True
    else:
        assert not d.accepted
        assert verdict.accepted is None
        assert d.error_code == expected
        assert record.event_type == EventType.SIGNAL_REJECTED
        assert record.payload["errorCode"] == expected
        assert d.message
        with pytest.raises(DvtError) as error:
            raise_for_rejection(d)
        assert error.value.code == expected


@pytest.mark.parametrize("terminal", [EventType.RUN_COMPLETED, EventType.RUN_FAILED,
                                      EventType.RUN_CANCELLED])
@pytest.mark.parametrize(
    ("signal_type", "payload"),
    [(S.PAUSE, {}), (S.RESUME, {}), (S.CANCEL, {}), (S.RETRY_STEP, {"stepId": "a"}),
     (S.SKIP_STEP, {"stepId": "a"}), (S.APPROVE_STEP, {"stepId": "gate", "decision": "approve"}),
     (S.APPROVE_RUN, {}), (S.RETRY_STEP, {"stepId": "not-there"})],
)
async def test_terminal_run_refuses_everything(
    store: MemoryRunStateStore, service: SignalService, terminal: EventType,
    signal_type: SignalType, payload: dict[str, Any],
) -> None:
    run = await new_run(store)
    await _terminal(terminal, run)
    verdict = await service.decide(request(run, signal_type, payload))
    assert verdict.decision.error_code == ErrorCode.RUN_TERMINAL
    with pytest.raises(RunTerminal):
        raise_for_rejection(verdict.decision)


async def test_accepted_retry_step_record_makes_a_new_attempt(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await new_run(store)
    await _failed_step(run)
    verdict = await service.decide(request(run, SignalType.RETRY_STEP, {"stepId": "a"}))
    assert verdict.snapshot.step("a").status == StepStatus.FAILED
    now = await store.get_snapshot(TENANT, run.run_id)
    assert now is not None
    assert now.step("a").status == StepStatus.PENDING
    assert now.step("a").logical_attempt_id == 2


async def test_gate_states_used_by_the_state_table(store: MemoryRunStateStore) -> None:
    # Guards the setups above: they really produce the states the table names.
    run = await new_run(store)
    await _gate(run)
    snap = await store.get_snapshot(TENANT, run.run_id)
    assert snap is not None
    assert snap.step("gate").substatus == StepSubstatus.AWAITING_APPROVAL
    await run.pause()
    snap = await store.get_snapshot(TENANT, run.run_id)
    assert snap is not None
    assert snap.status == RunStatus.PAUSED


# --- hostile input ----------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)
# Payloads that look like real ones often enough to reach every rule.
payload_st = st.one_of(
    st.dictionaries(st.text(max_size=12), json_value, max_size=4),
    st.fixed_dictionaries(
        {"stepId": st.sampled_from(["a", "b", "gate", "zz", ""]) | st.text(max_size=5)},
        optional={"decision": st.sampled_from(["approve", "reject", "no"]),
                  "reason": st.text(max_size=20) | st.integers()},
    ),
)


async def _hostile_round(signal_type: SignalType, payload: dict[str, Any],
                         roles: list[Role], setup_index: int, tenant: str) -> None:
    store = MemoryRunStateStore()
    service = SignalService(store, rate_limit_per_minute=None)
    run = await new_run(store)
    await [_pending, _running, _failed_step, _gate, _paused][setup_index](run)
    try:
        req = request(run, signal_type, payload, roles=tuple(roles), tenant=tenant)
    except ValueError:
        return  # the request model itself refused it: covered by parse_signal_request below
    outcome: SignalVerdict | DvtError
    try:
        outcome = await service.decide(req)
    except DvtError as exc:
        outcome = exc
    if isinstance(outcome, DvtError):
        assert outcome.code in (ErrorCode.SIGNAL_INVALID_PAYLOAD, ErrorCode.RUN_NOT_FOUND,
                                ErrorCode.IDENTIFIER_INVALID)
        assert await run.decisions() == []
        return
    verdict = outcome
    assert isinstance(verdict, SignalVerdict)
    records = await run.decisions()
    assert len(records) == 1
    assert records[0].run_seq == verdict.decision.run_seq
    assert (verdict.accepted is not None) == (verdict.decision.accepted
                                              and not verdict.decision.no_op)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    signal_type=st.sampled_from(list(SignalType)),
    payload=payload_st,
    roles=st.lists(st.sampled_from(list(Role)), max_size=3),
    setup_index=st.integers(0, 4),
    tenant=st.sampled_from([TENANT, "tenant-z"]),
)
def test_hostile_payloads_never_crash(signal_type: SignalType, payload: dict[str, Any],
                                      roles: list[Role], setup_index: int, tenant: str) -> None:
    asyncio.run(_hostile_round(signal_type, payload, roles, setup_index, tenant))


@settings(max_examples=200, deadline=None)
@given(data=json_value | st.fixed_dictionaries(
    {"signalId": st.text(max_size=8), "type": st.sampled_from([*list(SignalType), "NOPE"]),
     "tenantId": st.text(max_size=8), "runId": st.text(max_size=8),
     "actor": st.fixed_dictionaries({"id": st.text(max_size=8)},
                                    optional={"roles": st.lists(st.text(max_size=9))}),
     "payload": json_value}))
def test_parse_signal_request_only_raises_coded_errors(data: Any) -> None:
    parsed: SignalRequest | DvtError
    try:
        parsed = parse_signal_request(data)
    except DvtError as exc:
        parsed = exc
    if isinstance(parsed, DvtError):
        assert parsed.code in (ErrorCode.SIGNAL_INVALID_PAYLOAD, ErrorCode.IDENTIFIER_INVALID)
    else:
        assert isinstance(parsed, SignalRequest)


def test_parse_signal_request_reports_pipe_as_identifier_invalid() -> None:
    with pytest.raises(IdentifierInvalid):
        parse_signal_request({"signalId": "a|b", "type": "PAUSE", "tenantId": "t",
                              "runId": "r", "actor": {"id": "x"}})
    ok = parse_signal_request({"signalId": "s", "type": "PAUSE", "tenantId": "t", "runId": "r",
                               "actor": {"id": "x", "roles": ["operator"]}})
    assert ok.actor.roles == (Role.OPERATOR,)
