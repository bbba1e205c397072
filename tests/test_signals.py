"""The shared signal service: payload and tenant rules, duplicates, rate limit, authorization."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError
from signal_helpers import (
    RATE,
    TENANT,
    FakeClock,
    new_run,
    request,
)

from dvt_engine.errors import (
    ErrorCode,
    IdentifierInvalid,
    RunNotFound,
    SignalInvalidPayload,
    SignalRateLimited,
    SignalUnauthorized,
)
from dvt_engine.models.events import EventType
from dvt_engine.models.run import StepStatus
from dvt_engine.models.signals import (
    MAX_ACTOR_ROLES,
    MAX_PAYLOAD_ITEMS,
    Actor,
    Role,
    SignalRequest,
    SignalType,
)
from dvt_engine.ports import AuthorizationRequest, AuthorizationResult
from dvt_engine.signals import (
    RoleBasedAuthorizer,
    SignalService,
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


# --- rule 1: payload ---------------------------------------------------------------------------


async def test_invalid_payload_raises_with_paths_and_records_nothing(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    before = await run.log()
    with pytest.raises(SignalInvalidPayload) as info:
        await service.decide(request(run, SignalType.RETRY_STEP, {"reason": "x", "bogus": 1}))
    paths = {e["path"] for e in info.value.details["errors"]}
    assert paths == {"stepId", "bogus"}
    assert info.value.details["signalType"] == "RETRY_STEP"
    assert await run.log() == before


@pytest.mark.parametrize(
    ("signal_type", "payload", "path"),
    [
        (SignalType.APPROVE_STEP, {"stepId": "gate", "decision": "maybe"}, "decision"),
        (SignalType.SKIP_STEP, {"stepId": "a|b"}, "stepId"),
        (SignalType.PAUSE, {"reason": "x" * 2001}, "reason"),
        (SignalType.PAUSE, {"reason": "nul\x00here"}, "reason"),
        (SignalType.CANCEL, {"reason": "lone \ud800 surrogate"}, "reason"),
        (SignalType.RESUME, {"anything": True}, "anything"),
        (SignalType.RETRY_RUN, {"newRunId": ""}, "newRunId"),
    ],
)
async def test_invalid_payloads(store: MemoryRunStateStore, service: SignalService,
                                signal_type: SignalType, payload: dict[str, Any],
                                path: str) -> None:
    run = await (await new_run(store)).start()
    with pytest.raises(SignalInvalidPayload) as info:
        await service.decide(request(run, signal_type, payload))
    assert path in {e["path"] for e in info.value.details["errors"]}
    assert await run.decisions() == []


async def test_retry_run_new_run_id_must_differ(store: MemoryRunStateStore,
                                                service: SignalService) -> None:
    run = await (await new_run(store)).start()
    with pytest.raises(SignalInvalidPayload):
        await service.decide(request(run, SignalType.RETRY_RUN, {"newRunId": run.run_id}))


async def test_invalid_payload_beats_unknown_run_and_unauthorized(
    service: SignalService,
) -> None:
    with pytest.raises(SignalInvalidPayload):
        await service.decide(request("no-such-run", SignalType.SKIP_STEP, {}, roles=()))


async def test_unvalidated_request_identifiers_are_checked(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    # A caller may build a request without validation (model_construct); the service checks.
    run = await (await new_run(store)).start()
    sneaky = SignalRequest.model_construct(
        signal_id="s1", type=SignalType.PAUSE, tenant_id=TENANT, run_id=run.run_id, payload={},
        actor=Actor.model_construct(id="a|b", roles=(Role.OPERATOR,)),
    )
    with pytest.raises(IdentifierInvalid):
        await service.decide(sneaky)
    assert await run.decisions() == []


def test_surrogate_actor_id_is_refused_when_parsing() -> None:
    with pytest.raises(IdentifierInvalid):
        parse_signal_request({"signalId": "s", "type": "PAUSE", "tenantId": "t", "runId": "r",
                              "actor": {"id": "bad\udc80"}})


# --- rule 2: tenant ---------------------------------------------------------------------------


async def test_tenant_mismatch_looks_exactly_like_not_found(store: MemoryRunStateStore) -> None:
    service = SignalService(store)
    run = await (await new_run(store, tenant="tenant-b")).start()
    with pytest.raises(RunNotFound) as mismatch:
        await service.decide(request(run, SignalType.PAUSE, tenant=TENANT, signal_id="s1"))
    empty = SignalService(MemoryRunStateStore())
    with pytest.raises(RunNotFound) as missing:
        await empty.decide(request(run.run_id, SignalType.PAUSE, tenant=TENANT, signal_id="s1"))
    assert mismatch.value.to_dict() == missing.value.to_dict()
    assert "tenant" not in str(mismatch.value.to_dict()).lower()
    assert await run.decisions() == []


async def test_unknown_run_beats_unauthorized(service: SignalService) -> None:
    with pytest.raises(RunNotFound):
        await service.decide(request("ghost", SignalType.PAUSE, roles=()))


# --- rule 6 (first among recorded rules): duplicates -----------------------------------------


async def test_duplicate_returns_first_decision_and_does_nothing(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    first = await service.decide(request(run, SignalType.PAUSE, signal_id="p1"))
    assert first.accepted is not None
    assert not first.decision.duplicate
    await run.pause()
    again = await service.decide(request(run, SignalType.PAUSE, signal_id="p1"))
    assert again.accepted is None
    assert again.decision == first.decision.model_copy(update={"duplicate": True})
    assert len(await run.decisions()) == 1


async def test_duplicate_beats_state_authorization_and_payload_change(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    first = await service.decide(request(run, SignalType.CANCEL, signal_id="c1"))
    await run.run(EventType.RUN_CANCELLED, {})
    # Same signalId, now a terminal run, an actor without roles, another reason: first answer.
    again = await service.decide(request(run, SignalType.CANCEL, {"reason": "other"},
                                         signal_id="c1", roles=()))
    assert again.decision.accepted
    assert again.decision.duplicate
    assert again.decision.run_seq == first.decision.run_seq
    assert again.accepted is None
    assert len(await run.decisions()) == 1


class CountingAuthorizer(RoleBasedAuthorizer):
    """The default policy, counting how often it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        self.calls += 1
        return await super().authorize(request)


async def test_duplicate_is_answered_before_authorization_is_asked(
    store: MemoryRunStateStore,
) -> None:
    authz = CountingAuthorizer()
    service = SignalService(store, authz)
    run = await (await new_run(store)).start()
    await service.decide(request(run, SignalType.PAUSE, signal_id="p1"))
    assert authz.calls == 1
    for _ in range(3):
        again = await service.decide(request(run, SignalType.PAUSE, signal_id="p1"))
        assert again.decision.duplicate
    assert authz.calls == 1


async def test_duplicate_of_rejection_stays_rejected(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    first = await service.decide(request(run, SignalType.RETRY_STEP, {"stepId": "a"},
                                         signal_id="r1"))
    assert first.decision.error_code == ErrorCode.STEP_NOT_RETRYABLE
    await run.fail_step("a")  # now the step could be retried, but r1 was already decided
    again = await service.decide(request(run, SignalType.RETRY_STEP, {"stepId": "a"},
                                         signal_id="r1"))
    assert not again.decision.accepted
    assert again.decision.duplicate
    assert again.decision.error_code == ErrorCode.STEP_NOT_RETRYABLE
    assert (await store.get_snapshot(TENANT, run.run_id)).step("a").status == StepStatus.FAILED  # type: ignore[union-attr]


async def test_concurrent_duplicates_record_once_and_agree(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    verdicts = await asyncio.gather(*(
        service.decide(request(run, SignalType.PAUSE, {"reason": "race"}, signal_id="same"))
        for _ in range(12)
    ))
    assert len(await run.decisions()) == 1
    winners = [v for v in verdicts if not v.decision.duplicate]
    assert len(winners) == 1
    assert [v for v in verdicts if v.accepted is not None] == winners
    canonical = winners[0].decision.model_copy(update={"duplicate": True})
    assert all(v.decision.model_copy(update={"duplicate": True}) == canonical for v in verdicts)


async def test_concurrent_distinct_signals_are_all_recorded(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    verdicts = await asyncio.gather(*(
        service.decide(request(run, SignalType.CANCEL, signal_id=f"c{i}")) for i in range(10)
    ))
    records = await run.decisions()
    assert len(records) == 10
    assert sorted(v.decision.run_seq or 0 for v in verdicts) == [e.run_seq for e in records]


# --- rate limit -------------------------------------------------------------------------------


async def test_rate_limit_refuses_without_recording_then_recovers(
    store: MemoryRunStateStore,
) -> None:
    clock = FakeClock()
    service = SignalService(store, clock=clock, rate_limit_per_minute=3)
    run = await (await new_run(store)).start()
    for i in range(3):
        ok = await service.decide(request(run, SignalType.CANCEL, signal_id=f"c{i}"),
                                  capabilities=RATE)
        assert ok.decision.accepted
    limited = await service.decide(request(run, SignalType.CANCEL, signal_id="c3"),
                                   capabilities=RATE)
    assert not limited.decision.accepted
    assert limited.accepted is None
    assert limited.decision.error_code == ErrorCode.SIGNAL_RATE_LIMITED
    assert limited.decision.run_seq is None
    assert len(await run.decisions()) == 3
    with pytest.raises(SignalRateLimited) as info:
        raise_for_rejection(limited.decision)
    assert info.value.retryable
    # A duplicate is answered even while the window is full: it is not a new signal.
    dup = await service.decide(request(run, SignalType.CANCEL, signal_id="c0"),
                               capabilities=RATE)
    assert dup.decision.duplicate
    assert dup.decision.accepted
    # Another run has its own window.
    other = await (await new_run(store)).start()
    assert (await service.decide(request(other, SignalType.CANCEL),
                                 capabilities=RATE)).decision.accepted
    clock.advance(61)
    retried = await service.decide(request(run, SignalType.CANCEL, signal_id="c3"),
                                   capabilities=RATE)
    assert retried.decision.accepted
    assert not retried.decision.duplicate
    assert len(await run.decisions()) == 4


@pytest.mark.parametrize("oversized", [
    {"actor": {"id": "eve", "roles": ["operator"] * 100_000}},
    {"payload": {"reason": "r", "extra": list(range(100_000))}},
    {"payload": {f"k{i}": i for i in range(MAX_PAYLOAD_ITEMS + 1)}},
])  # fmt: skip
async def test_oversized_collections_are_refused_before_the_rate_limit(
    store: MemoryRunStateStore, oversized: dict[str, Any]
) -> None:
    service = SignalService(store, rate_limit_per_minute=1)
    run = await (await new_run(store)).start()
    data = {"signalId": "big", "type": "PAUSE", "tenantId": TENANT, "runId": run.run_id,
            "actor": {"id": "alice", "roles": ["admin"]}, **oversized}
    with pytest.raises(SignalInvalidPayload) as info:
        parse_signal_request(data)
    assert info.value.details["errors"]
    with pytest.raises(ValidationError):
        SignalRequest.model_validate(data)
    # Nothing was counted: the window's single slot is still free, and nothing was recorded.
    assert await run.decisions() == []
    ok = await service.decide(request(run, SignalType.PAUSE), capabilities=RATE)
    assert ok.decision.accepted


def test_collection_bounds_admit_real_signals() -> None:
    roles = tuple(Role)
    assert len(roles) <= MAX_ACTOR_ROLES
    Actor(id="a", roles=roles + roles)
    with pytest.raises(ValidationError):
        Actor(id="a", roles=(Role.OPERATOR,) * (MAX_ACTOR_ROLES + 1))


async def test_rate_limit_needs_the_capability_and_can_be_disabled(
    store: MemoryRunStateStore,
) -> None:
    run = await (await new_run(store)).start()
    without_capability = SignalService(store, rate_limit_per_minute=1)
    disabled = SignalService(store, rate_limit_per_minute=None)
    for i in range(3):
        v1 = await without_capability.decide(request(run, SignalType.CANCEL))
        v2 = await disabled.decide(request(run, SignalType.CANCEL), capabilities=RATE)
        assert v1.decision.accepted, i
        assert v2.decision.accepted, i


async def test_rate_limit_default_is_sixty_per_minute(store: MemoryRunStateStore) -> None:
    clock = FakeClock()
    service = SignalService(store, clock=clock)
    run = await (await new_run(store)).start()
    codes = []
    for _ in range(61):
        clock.advance(0.5)
        v = await service.decide(request(run, SignalType.PAUSE), capabilities=RATE)
        codes.append(v.decision.error_code)
    assert codes[:60].count(ErrorCode.SIGNAL_RATE_LIMITED) == 0
    assert codes[60] == ErrorCode.SIGNAL_RATE_LIMITED


# --- rule 3: authorization --------------------------------------------------------------------


async def test_unauthorized_is_recorded_and_returned(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    await run.fail_step("a")
    verdict = await service.decide(request(run, SignalType.RETRY_STEP, {"stepId": "a"},
                                           roles=(Role.OPERATOR,)))
    d = verdict.decision
    assert not d.accepted
    assert verdict.accepted is None
    assert d.error_code == ErrorCode.SIGNAL_UNAUTHORIZED
    assert d.effective_role is None
    assert d.message
    assert "engineer" in d.message
    [record] = await run.decisions()
    assert record.event_type == EventType.SIGNAL_REJECTED
    assert record.payload["errorCode"] == "SIGNAL_UNAUTHORIZED"
    assert record.run_seq == d.run_seq
    with pytest.raises(SignalUnauthorized):
        raise_for_rejection(d)
    snapshot = await store.get_snapshot(TENANT, run.run_id)
    assert snapshot is not None
    assert snapshot.step("a").status == StepStatus.FAILED


async def test_unauthorized_beats_state_check(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    await run.run(EventType.RUN_CANCELLED, {})
    verdict = await service.decide(request(run, SignalType.PAUSE, roles=(Role.APPROVER,)))
    assert verdict.decision.error_code == ErrorCode.SIGNAL_UNAUTHORIZED


async def test_custom_authorizer_is_consulted(store: MemoryRunStateStore) -> None:
    service = SignalService(store, RoleBasedAuthorizer({SignalType.PAUSE: Role.ADMIN}))
    run = await (await new_run(store)).start()
    refused = await service.decide(request(run, SignalType.PAUSE, roles=(Role.ENGINEER,)))
    assert refused.decision.error_code == ErrorCode.SIGNAL_UNAUTHORIZED
    allowed = await service.decide(request(run, SignalType.PAUSE, roles=(Role.ADMIN,)))
    assert allowed.decision.accepted
    assert allowed.decision.effective_role == Role.ADMIN


async def test_effective_role_is_recorded_in_the_audit(
    store: MemoryRunStateStore, service: SignalService
) -> None:
    run = await (await new_run(store)).start()
    verdict = await service.decide(request(run, SignalType.PAUSE, {"reason": "deploy"},
                                           roles=(Role.ADMIN, Role.OPERATOR)))
    assert verdict.decision.effective_role == Role.OPERATOR
    assert verdict.accepted is not None
    assert verdict.accepted.effective_role == Role.OPERATOR
    [record] = await run.decisions()
    assert record.payload["effectiveRole"] == "operator"
    assert record.payload["actor"] == {"id": "alice", "roles": ["admin", "operator"]}
