"""API keys of the caller's tenant (admin): create, list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path
from starlette.responses import Response

from dvt_api.auth import Principal, role, services
from dvt_api.problems import ApiProblem, HttpCode
from dvt_api.schemas import KeyCreate, KeyCreated, KeyInfo, KeyList
from dvt_api.services import Services
from dvt_engine.access import ApiKey, ApiKeyStore, ApiRole, hash_api_key, mint_api_key
from dvt_engine.eventlog import utc_now

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])
ADMIN = role(ApiRole.ADMIN)


def key_info(key: ApiKey) -> KeyInfo:
    """A key as listed."""
    return KeyInfo(key_id=key.key_id, tenant_id=key.tenant_id, roles=list(key.roles),
                   name=key.name, created_at=key.created_at, revoked_at=key.revoked_at)


async def create_key(keys: ApiKeyStore, tenant_id: str, roles: list[ApiRole],
                     name: str | None) -> KeyCreated:
    """Mint and store a key; the answer holds the key's text, shown this once."""
    key_id, secret = mint_api_key()
    record = ApiKey(key_id=key_id, tenant_id=tenant_id, roles=tuple(dict.fromkeys(roles)),
                    key_hash=hash_api_key(secret), created_at=utc_now(), name=name)
    await keys.create_key(record)
    return KeyCreated(key=secret, **key_info(record).model_dump())


@router.post("", status_code=201, response_model=KeyCreated, summary="Create an API key")
async def create(body: KeyCreate, who: Principal = ADMIN,
                 svc: Services = Depends(services)) -> KeyCreated:
    """A new key of the caller's tenant with the given roles."""
    return await create_key(svc.keys, who.tenant_id, body.roles, body.name)


@router.get("", response_model=KeyList, summary="List the tenant's API keys")
async def list_keys(who: Principal = ADMIN,
                    svc: Services = Depends(services)) -> KeyList:
    """Every key of the caller's tenant (revoked ones too), oldest first."""
    return KeyList(items=[key_info(k) for k in await svc.keys.list_keys(who.tenant_id)])


@router.delete("/{keyId}", status_code=204, summary="Revoke an API key",
               response_class=Response)
async def revoke(key_id: str = Path(alias="keyId", max_length=200), who: Principal = ADMIN,
                 svc: Services = Depends(services)) -> Response:
    """Revoke a key of the caller's tenant; it fails on its next request."""
    if not await svc.keys.revoke_key(who.tenant_id, key_id):
        raise ApiProblem(404, HttpCode.API_KEY_NOT_FOUND, "no such API key")
    return Response(status_code=204)
