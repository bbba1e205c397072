"""The default authorizer: a role-based policy over the signal catalog (contract §6.1).

Roles ``admin > engineer > operator`` are ordered: a more powerful role may do everything a less
powerful one may. ``approver`` stands apart and is NOT implied by ``admin``: approving a gate or a
run is a separate duty, so an administrator approves only when it also holds ``approver``
(segregation of duties; a host that wants otherwise passes its own policy).

The effective role of an allowed signal is the least powerful of the actor's roles that
suffices; it is what the audit record names. "Least powerful" follows ``POWER_ORDER``:
approver, operator, engineer, admin (approver can send the fewest signals).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dvt_engine.models.signals import Role, SignalType
from dvt_engine.ports import AuthorizationRequest, AuthorizationResult, Authorizer

#: The ordered roles, least powerful first; a role here implies every role before it.
ROLE_HIERARCHY: tuple[Role, ...] = (Role.OPERATOR, Role.ENGINEER, Role.ADMIN)

#: Every role, least powerful first: the tie-break when several of an actor's roles suffice.
POWER_ORDER: tuple[Role, ...] = (Role.APPROVER, Role.OPERATOR, Role.ENGINEER, Role.ADMIN)

PolicyEntry = Role | Iterable[Role]

#: Contract §6.1, plus dvt's APPROVE_RUN (an approver's duty, like APPROVE_STEP).
DEFAULT_POLICY: Mapping[SignalType, Role] = {
    SignalType.PAUSE: Role.OPERATOR,
    SignalType.RESUME: Role.OPERATOR,
    SignalType.CANCEL: Role.OPERATOR,
    SignalType.RETRY_STEP: Role.ENGINEER,
    SignalType.SKIP_STEP: Role.ENGINEER,
    SignalType.RETRY_RUN: Role.ENGINEER,
    SignalType.APPROVE_STEP: Role.APPROVER,
    SignalType.APPROVE_RUN: Role.APPROVER,
    # A custom signal's roles come from its plan's declaration (AuthorizationRequest).
    SignalType.CUSTOM: Role.OPERATOR,
}


def role_satisfies(held: Role, required: Role) -> bool:
    """Whether holding ``held`` is enough where ``required`` is asked for."""
    if held == required:
        return True
    if held in ROLE_HIERARCHY and required in ROLE_HIERARCHY:
        return ROLE_HIERARCHY.index(held) >= ROLE_HIERARCHY.index(required)
    return False


def effective_role(
    held: Iterable[Role], required: Iterable[Role]
) -> Role | None:
    """The least powerful held role that satisfies any required role, or None."""
    wanted = tuple(required)
    sufficient = {r for r in held if any(role_satisfies(r, need) for need in wanted)}
    for role in POWER_ORDER:
        if role in sufficient:
            return role
    return None


class RoleBasedAuthorizer(Authorizer):
    """Allows a signal when one of the actor's roles satisfies the policy's required role.

    ``policy`` maps each signal type to a role (that role or a more powerful ordered one
    suffices) or to a collection of roles (any of them suffices, with the same ordering).
    A signal type missing from the policy is refused for everyone (deny by default).
    """

    def __init__(self, policy: Mapping[SignalType, PolicyEntry] | None = None) -> None:
        source = DEFAULT_POLICY if policy is None else policy
        self.policy: dict[SignalType, tuple[Role, ...]] = {
            SignalType(kind): _as_roles(entry) for kind, entry in source.items()
        }

    def required_roles(self, signal_type: SignalType) -> tuple[Role, ...]:
        """The roles the policy asks for ``signal_type`` (empty: nobody may send it)."""
        return self.policy.get(signal_type, ())

    async def authorize(self, request: AuthorizationRequest) -> AuthorizationResult:
        """Allow with the effective role, or refuse saying which role was needed."""
        return self.decide(request.actor.roles, request.signal_type, request.actor.id,
                           declared=request.declared_roles)

    def decide(
        self, roles: Iterable[Role], signal_type: SignalType, actor_id: str = "actor", *,
        declared: Iterable[Role] = (),
    ) -> AuthorizationResult:
        """The synchronous core of ``authorize``, for callers without an event loop.

        ``declared``: a CUSTOM signal's roles from its plan, used while the policy allows
        CUSTOM at all (a policy without CUSTOM refuses every custom signal).
        """
        required = self.required_roles(signal_type)
        if signal_type == SignalType.CUSTOM and required and tuple(declared):
            required = _as_roles(tuple(declared))
        if not required:
            return AuthorizationResult(
                allowed=False, reason=f"no role may send {signal_type} under this policy"
            )
        held = tuple(roles)
        chosen = effective_role(held, required)
        if chosen is None:
            needed = " or ".join(_describe(r) for r in required)
            shown = ", ".join(str(r) for r in held) or "none"
            return AuthorizationResult(
                allowed=False,
                reason=f"{signal_type} needs {needed}; actor {actor_id!r} has roles: {shown}",
            )
        return AuthorizationResult(allowed=True, effective_role=chosen)


def _as_roles(entry: PolicyEntry) -> tuple[Role, ...]:
    if isinstance(entry, str):
        return (Role(entry),)
    roles = tuple(Role(r) for r in entry)
    return tuple(sorted(set(roles), key=POWER_ORDER.index))


def _describe(role: Role) -> str:
    if role not in ROLE_HIERARCHY:
        return f"role {role}"
    stronger = ROLE_HIERARCHY[ROLE_HIERARCHY.index(role) + 1 :]
    if not stronger:
        return f"role {role}"
    return f"role {role} (or {', '.join(str(r) for r in stronger)})"
