"""The default role-based authorizer: contract §6.1's roles table and effective-role choice."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dvt_engine.models.signals import Actor, Role, SignalType
from dvt_engine.ports import AuthorizationRequest
from dvt_engine.signals import (
    DEFAULT_POLICY,
    POWER_ORDER,
    RoleBasedAuthorizer,
    effective_role,
    role_satisfies,
)

A, E, OP, P = Role.ADMIN, Role.ENGINEER, Role.OPERATOR, Role.APPROVER

# Contract §6.1 (plus APPROVE_RUN, an approver's duty): which single role may send what.
EXPECTED_SINGLE_ROLE = {
    SignalType.PAUSE: {A, E, OP},
    SignalType.RESUME: {A, E, OP},
    SignalType.CANCEL: {A, E, OP},
    SignalType.RETRY_STEP: {A, E},
    SignalType.SKIP_STEP: {A, E},
    SignalType.RETRY_RUN: {A, E},
    SignalType.APPROVE_STEP: {P},
    SignalType.APPROVE_RUN: {P},
    # A custom signal without declared roles (its plan's default): operator and above.
    SignalType.CUSTOM: {A, E, OP},
}


def _request(signal_type: SignalType, *roles: Role) -> AuthorizationRequest:
    return AuthorizationRequest(
        actor=Actor(id="alice", roles=roles),
        signal_type=signal_type,
        tenant_id="t",
        project_id="p",
        environment_id="e",
        run_id="r",
    )


def test_policy_covers_every_signal_type() -> None:
    assert set(DEFAULT_POLICY) == set(SignalType)


@pytest.mark.parametrize("signal_type", list(SignalType))
@pytest.mark.parametrize("role", list(Role))
async def test_default_policy_single_role(signal_type: SignalType, role: Role) -> None:
    result = await RoleBasedAuthorizer().authorize(_request(signal_type, role))
    allowed = role in EXPECTED_SINGLE_ROLE[signal_type]
    assert result.allowed is allowed
    if allowed:
        assert result.effective_role == role
        assert result.reason is None
    else:
        assert result.effective_role is None
        assert result.reason
        assert str(signal_type) in result.reason


@pytest.mark.parametrize(
    ("roles", "signal_type", "expected"),
    [
        ((A, OP), SignalType.PAUSE, OP),
        ((A, E, OP), SignalType.CANCEL, OP),
        ((A, E), SignalType.RETRY_STEP, E),
        ((E, A), SignalType.PAUSE, E),
        ((A,), SignalType.PAUSE, A),
        ((A, P), SignalType.APPROVE_STEP, P),
        ((E, P), SignalType.APPROVE_RUN, P),
        ((E, P), SignalType.PAUSE, E),
        ((P, OP), SignalType.RESUME, OP),
        ((OP, OP, A), SignalType.SKIP_STEP, A),
    ],
)
async def test_effective_role_is_least_powerful_sufficient(
    roles: tuple[Role, ...], signal_type: SignalType, expected: Role
) -> None:
    result = await RoleBasedAuthorizer().authorize(_request(signal_type, *roles))
    assert result.allowed
    assert result.effective_role == expected


async def test_admin_does_not_imply_approver() -> None:
    for signal_type in (SignalType.APPROVE_STEP, SignalType.APPROVE_RUN):
        result = await RoleBasedAuthorizer().authorize(_request(signal_type, A, E, OP))
        assert not result.allowed
        assert result.reason is not None
        assert "approver" in result.reason


async def test_no_roles_refused_with_reason() -> None:
    result = await RoleBasedAuthorizer().authorize(_request(SignalType.PAUSE))
    assert not result.allowed
    assert result.reason is not None
    assert "none" in result.reason
    assert "operator" in result.reason


async def test_custom_policy_single_role() -> None:
    authz = RoleBasedAuthorizer({SignalType.CANCEL: E, SignalType.PAUSE: OP})
    assert not (await authz.authorize(_request(SignalType.CANCEL, OP))).allowed
    ok = await authz.authorize(_request(SignalType.CANCEL, A, E))
    assert ok.allowed
    assert ok.effective_role == E
    # Missing from the custom policy: refused for everyone (deny by default).
    missing = await authz.authorize(_request(SignalType.RESUME, A, E, OP, P))
    assert not missing.allowed
    assert missing.reason is not None
    assert "no role" in missing.reason


async def test_custom_policy_collection_lets_admin_approve() -> None:
    authz = RoleBasedAuthorizer({SignalType.APPROVE_STEP: [P, A]})
    admin = await authz.authorize(_request(SignalType.APPROVE_STEP, A))
    assert admin.allowed
    assert admin.effective_role == A
    both = await authz.authorize(_request(SignalType.APPROVE_STEP, A, P))
    assert both.allowed
    assert both.effective_role == P
    assert not (await authz.authorize(_request(SignalType.APPROVE_STEP, E))).allowed


def test_custom_policy_accepts_plain_strings() -> None:
    authz = RoleBasedAuthorizer({"PAUSE": "engineer"})  # type: ignore[dict-item]
    assert authz.required_roles(SignalType.PAUSE) == (E,)
    with pytest.raises(ValueError, match="superuser"):
        RoleBasedAuthorizer({SignalType.PAUSE: "superuser"})  # type: ignore[dict-item]


def test_role_satisfies_ordering() -> None:
    assert role_satisfies(A, OP)
    assert role_satisfies(A, E)
    assert role_satisfies(E, OP)
    assert not role_satisfies(OP, E)
    assert not role_satisfies(E, A)
    assert not role_satisfies(A, P)
    assert not role_satisfies(P, OP)
    assert role_satisfies(P, P)


roles_st = st.lists(st.sampled_from(list(Role)), max_size=5)


@given(held=roles_st, required=st.lists(st.sampled_from(list(Role)), min_size=1, max_size=3))
def test_effective_role_properties(held: list[Role], required: list[Role]) -> None:
    chosen = effective_role(held, required)
    sufficient = [r for r in held if any(role_satisfies(r, need) for need in required)]
    if not sufficient:
        assert chosen is None
        return
    assert chosen in held
    assert any(role_satisfies(chosen, need) for need in required)
    # Minimal: no sufficient held role is less powerful than the chosen one.
    assert all(POWER_ORDER.index(chosen) <= POWER_ORDER.index(r) for r in sufficient)


@given(held=roles_st, signal_type=st.sampled_from(list(SignalType)))
def test_sync_decide_matches_single_role_table(held: list[Role], signal_type: SignalType) -> None:
    result = RoleBasedAuthorizer().decide(held, signal_type)
    assert result.allowed == any(r in EXPECTED_SINGLE_ROLE[signal_type] for r in held)


@pytest.mark.parametrize(("declared", "allowed"), [
    ((E,), {A, E}), ((P,), {P}), ((OP, P), {A, E, OP, P}),
])
async def test_a_custom_signal_takes_the_roles_its_plan_declares(
    declared: tuple[Role, ...], allowed: set[Role]
) -> None:
    for role in Role:
        request = AuthorizationRequest(
            actor=Actor(id="alice", roles=(role,)), signal_type=SignalType.CUSTOM,
            tenant_id="t", project_id="p", environment_id="e", run_id="r",
            declared_roles=declared)
        result = await RoleBasedAuthorizer().authorize(request)
        assert result.allowed == (role in allowed), role
        assert result.effective_role == (role if result.allowed else None)


async def test_a_policy_without_custom_refuses_declared_roles_too() -> None:
    request = AuthorizationRequest(
        actor=Actor(id="alice", roles=(A,)), signal_type=SignalType.CUSTOM, tenant_id="t",
        project_id="p", environment_id="e", run_id="r", declared_roles=(A,))
    result = await RoleBasedAuthorizer({SignalType.PAUSE: OP}).authorize(request)
    assert not result.allowed
