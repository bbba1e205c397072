"""Idempotency-Key handling for POST /v1/runs, after the IETF Idempotency-Key draft.

The first request with a key claims it (atomically, in the access store), runs, and records its
answer; a repeat with the same body replays that answer with ``Idempotent-Replayed: true``, a
repeat with another body is 422 IDEMPOTENCY_KEY_MISMATCH, and a repeat while the first is still
running is 409 IDEMPOTENCY_KEY_IN_USE. A first request that fails releases its claim, so the
client can retry it with the same key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response

from dvt_api.problems import ApiProblem, HttpCode
from dvt_api.services import Services
from dvt_engine.access import StoredResponse

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def request_hash(body: Any) -> str:
    """The fingerprint of a request body: sha256 of its canonical JSON."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_key(key: str) -> str:
    """The key, or REQUEST_INVALID when it is not 1-255 visible ASCII characters."""
    if not _KEY.match(key):
        raise ApiProblem(422, HttpCode.REQUEST_INVALID,
                         "Idempotency-Key must be 1-255 visible ASCII characters",
                         errors=[{"path": "header/Idempotency-Key", "message": "invalid"}])
    return key


def replay(stored: StoredResponse) -> Response:
    """The first answer again, marked as a replay (a created run answers 200 now)."""
    headers = dict(stored.headers)
    headers[REPLAYED] = "true"
    status = 200 if stored.status == 201 else stored.status
    return Response(stored.body, status_code=status, headers=headers,
                    media_type="application/json")


async def once(svc: Services, tenant_id: str, key: str, fingerprint: str,
               produce: Callable[[], Awaitable[StoredResponse]]) -> Response:
    """Answer a keyed request: produce it the first time, replay it afterwards."""
    claim = await svc.idempotency.claim(tenant_id, key, fingerprint,
                                        ttl=svc.settings.idempotency_ttl)
    if claim.state == "mismatch":
        raise ApiProblem(422, HttpCode.IDEMPOTENCY_KEY_MISMATCH,
                         "this Idempotency-Key was used with a different request body")
    if claim.state == "in_flight":
        raise ApiProblem(409, HttpCode.IDEMPOTENCY_KEY_IN_USE,
                         "a request with this Idempotency-Key is still being processed",
                         headers={"Retry-After": "1"})
    if claim.state == "done" and claim.response is not None:
        return replay(claim.response)
    try:
        answer = await produce()
    except Exception:
        # A cancelled request keeps its claim until the in-flight lock expires (60 s).
        await svc.idempotency.release(tenant_id, key)
        raise
    await svc.idempotency.complete(tenant_id, key, answer)
    return Response(answer.body, status_code=answer.status, headers=dict(answer.headers),
                    media_type="application/json")
