"""API keys on requests: the tenant of a request is its key's tenant, roles guard each route."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from dvt_api.problems import ApiProblem, HttpCode
from dvt_api.services import Services
from dvt_engine.access import ApiRole, hash_api_key, hashes_match, looks_like_api_key

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="dvt"'}


@dataclass(frozen=True)
class Principal:
    """Who sent a request: the key's id, its tenant and its roles."""

    key_id: str
    tenant_id: str
    roles: frozenset[ApiRole]

    def require(self, role: ApiRole) -> None:
        """FORBIDDEN unless the key has ``role`` (``admin`` implies no other role)."""
        if role not in self.roles:
            raise ApiProblem(403, HttpCode.FORBIDDEN,
                             f"this needs an API key with the {role.value!r} role")


def services(request: Request) -> Services:
    """The app's open services."""
    found: Services = request.app.state.services
    return found


def _unauthenticated(detail: str) -> ApiProblem:
    return ApiProblem(401, HttpCode.UNAUTHENTICATED, detail, headers=CHALLENGE)


async def principal(request: Request, svc: Services = Depends(services)) -> Principal:
    """The request's principal from ``Authorization: Bearer <key>``; 401 when none is valid."""
    header = request.headers.get("authorization")
    if not header:
        raise _unauthenticated("send an API key: Authorization: Bearer <key>")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not looks_like_api_key(token):
        raise _unauthenticated("the API key is missing, unknown or revoked")
    presented = hash_api_key(token)
    key = await svc.keys.key_by_hash(presented)
    if key is None or not key.active or not hashes_match(key.key_hash, presented):
        raise _unauthenticated("the API key is missing, unknown or revoked")
    state = request.scope.setdefault("state", {})
    state["tenant_id"], state["key_id"] = key.tenant_id, key.key_id
    return Principal(key.key_id, key.tenant_id, frozenset(key.roles))


def role(needed: ApiRole) -> Any:
    """A dependency: the principal, FORBIDDEN unless it has ``needed``."""

    async def check(who: Principal = Depends(principal)) -> Principal:
        who.require(needed)
        return who

    return Depends(check)
