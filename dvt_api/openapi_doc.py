"""The refusals in the OpenAPI document: problem+json answers and the bearer key, per operation.

FastAPI documents only the success answer and a JSON 422 of its own; the service answers every
refusal as problem+json (dvt_api/problems.py). This adds, to each operation, the statuses it can
refuse with, each with the Problem schema, and the bearer security of the /v1 routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from dvt_api.problems import PROBLEM_TYPE

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details with the stable dvt error code.",
    "required": ["type", "title", "status", "detail", "code", "instance"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["path", "message"],
            "properties": {"path": {"type": "string"}, "message": {"type": "string"}}}},
    },
}

REASONS = {
    401: "missing, unknown or revoked API key",
    403: "the key lacks the role this needs",
    404: "no such resource for this tenant",
    409: "refused in the resource's current state",
    413: "the body is larger than the service accepts",
    415: "the body is not application/json",
    422: "the request does not match its schema, or the plan is refused",
    429: "too many signals; retry after Retry-After",
    503: "the store or the engine is unavailable; retry after Retry-After",
}


def refusals(method: str, path: str, has_body: bool) -> list[int]:
    """The statuses an operation can refuse with."""
    if not path.startswith("/v1/"):
        return [503] if path == "/readyz" else []
    found = {401, 403, 422, 503}
    if has_body:
        found |= {413, 415}
    if "{" in path:
        found.add(404)
    if path == "/v1/runs" and method == "post":
        found |= {404, 409}  # a planRef not stored; a runId or Idempotency-Key in use
    if path.endswith("/signals"):
        found |= {409, 429}
    return sorted(found)


def _problem_response(status: int) -> dict[str, Any]:
    return {"description": REASONS[status],
            "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def enrich(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with Problem answers and bearer security on every operation that needs them."""
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components["securitySchemes"] = {"apiKey": {
        "type": "http", "scheme": "bearer", "description": "an API key: dvt_sk_..."}}
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in refusals(method, path, "requestBody" in operation):
                if str(status) == "503" and path == "/readyz":
                    continue  # documented by the route: the readiness body, not a problem
                responses[str(status)] = _problem_response(status)
            if path.startswith("/v1/"):
                operation["security"] = [{"apiKey": []}]
    return spec


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the enriched document (built once, then cached)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = enrich(plain())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
