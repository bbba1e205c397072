"""Compliance export (auditor or admin): the caller's tenant's events of a period, from both
tiers, streamed as JSON lines with a closing manifest line (docs/audit.md)."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from starlette.responses import StreamingResponse

from dvt_api.auth import Principal, principal, services
from dvt_api.problems import PROBLEM_TYPE, ApiProblem, HttpCode
from dvt_api.services import Services
from dvt_engine.access import ApiRole
from dvt_engine.errors import UsageError

router = APIRouter(prefix="/v1/audit", tags=["audit"])
#: Either role reads the export; ``admin`` implies no other role, so both are named.
EXPORT_ROLES = frozenset({ApiRole.AUDITOR, ApiRole.ADMIN})


def _time(text: str, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{name} takes an ISO date or time (2026-01-31, 2026-01-31T12:00Z),"
                         f" not {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@router.get("/export", summary="The tenant's events of a period, hot and archived",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}},
                             "description": "One event per line (the `dvt events --json` form),"
                                            " then a line {\"manifest\": {rows, hotRows,"
                                            " coldRows, bytes, sha256, ...}}"},
                       404: {"description": "another tenant named, or a service without the"
                                            " PostgreSQL store: answered like a missing"
                                            " resource",
                             "content": {PROBLEM_TYPE: {"schema": {
                                 "$ref": "#/components/schemas/Problem"}}}}})
async def export(
    start: str = Query(alias="from", max_length=40,
                       description="Start of the period (ISO date or time, UTC unless zoned),"
                                   " included"),
    end: str = Query(alias="to", max_length=40, description="End of the period, excluded"),
    fmt: str = Query(default="jsonl", alias="format", description="jsonl (the only one here)",
                     json_schema_extra={"enum": ["jsonl"]}),
    tenant: str | None = Query(default=None, max_length=200,
                               description="The caller's own tenant (optional; another one is"
                                           " not found)"),
    who: Principal = Depends(principal), svc: Services = Depends(services),
) -> StreamingResponse:
    """Events persisted in ``[from, to)``, both tiers read as of one snapshot; the last line's
    ``sha256`` covers every line before it (USAGE_ERROR for a bad period or format)."""
    if not EXPORT_ROLES & who.roles:
        raise ApiProblem(403, HttpCode.FORBIDDEN, "this needs an API key with the 'auditor'"
                                                  " or 'admin' role")
    if tenant is not None and tenant != who.tenant_id:
        raise ApiProblem(404, HttpCode.NOT_FOUND, "no such tenant")
    if fmt != "jsonl":
        raise UsageError(f"format is jsonl over HTTP (the CLI also writes parquet), not {fmt!r}")
    url = svc.settings.store.store_url()
    if not url.startswith(("postgresql:", "postgres:")):
        raise ApiProblem(404, HttpCode.NOT_FOUND, "the export needs the PostgreSQL store")
    exporter: Any = importlib.import_module("dvt_archive.export")
    lines = await exporter.export_lines(url, who.tenant_id, _time(start, "from"),
                                        _time(end, "to"))
    return StreamingResponse(lines, media_type="application/x-ndjson")
