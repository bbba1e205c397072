"""Property-based conformance: schemathesis drives docs/openapi.json against a live `dvt serve`.

Every generated request (valid and invalid) must get an answer the document describes: no 5xx,
a documented status code, a body matching its schema, and problem+json for every refusal.
DVT_CONFORMANCE_EXAMPLES bounds the examples per operation (small by default, for CI).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from api_helpers import REPO, ApiServer, tenant
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckContext
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
)

#: The tenant stream stays open for as long as the client listens, so a generated valid request
#: would never end; tests/api/test_api_tenant_stream.py covers it, refusals included.
SCHEMA = schemathesis.openapi.from_path(REPO / "docs" / "openapi.json").exclude(path="/v1/stream")
MAX_EXAMPLES = int(os.environ.get("DVT_CONFORMANCE_EXAMPLES", "10"))
PROBLEM_TYPE = "application/problem+json"
#: Operations whose input a JSON Schema cannot fully describe: a plan is also checked as a DAG
#: with known step kinds, a signal's fields depend on its type, a page cursor is an opaque token
#: the service made, a webhook URL must be a public https address, a usage window's first day
#: must come before its end, and so must an audit export's period. A schema-valid request may
#: be refused there with a coded 422, so "schema-valid means accepted" is not asked of them.
SEMANTIC_BODIES = {("POST", "/v1/plans"), ("POST", "/v1/plans/validate"), ("POST", "/v1/runs"),
                   ("POST", "/v1/runs/{runId}/signals"), ("GET", "/v1/runs"),
                   ("GET", "/v1/runs/{runId}/events"), ("GET", "/v1/runs/{runId}/stream"),
                   ("POST", "/v1/webhooks"), ("GET", "/v1/webhooks/{webhookId}/deliveries"),
                   ("GET", "/v1/usage"), ("GET", "/v1/audit/export")}
#: Validation answers any JSON document with 200 and a report of its issues, by design.
REPORTS_ANY_BODY = {("POST", "/v1/plans/validate")}


def refusals_are_problems(ctx: CheckContext, response: Any, case: Any) -> bool:
    """Every 4xx/5xx is problem+json with a code, the status and the request id."""
    if response.status_code < 400:
        return True
    assert response.headers.get("content-type", [""])[0] == PROBLEM_TYPE, response.text
    body = response.json()
    assert body["status"] == response.status_code
    assert body["code"]
    assert body["code"] == body["code"].upper()
    assert body["instance"] == response.headers["x-request-id"][0]
    assert "Traceback" not in response.text
    return True


@pytest.fixture(scope="module")
def conformance_key(api_server: ApiServer) -> str:
    """A key with every role of a tenant of its own (admin, so api-keys routes answer too)."""
    t = tenant()
    with api_server.client(api_server.admin(t)) as c:
        made = c.post("/v1/api-keys",
                      json={"roles": ["admin", "runner", "reader", "operator", "approver"]})
        assert made.status_code == 201, made.text
        return str(made.json()["key"])


@SCHEMA.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(case: Any, api_server: ApiServer, conformance_key: str) -> None:
    operation = (case.operation.method.upper(), case.operation.path)
    excluded = [positive_data_acceptance] if operation in SEMANTIC_BODIES else []
    if operation in REPORTS_ANY_BODY:
        excluded.append(negative_data_rejection)
    # A case that drops the key on purpose (to expect 401) goes out without it.
    negated = case.operation.schema.is_security_param_negated(case)
    headers = {} if negated else {"Authorization": f"Bearer {conformance_key}"}
    case.call_and_validate(base_url=api_server.base_url, headers=headers,
                           additional_checks=[refusals_are_problems],
                           excluded_checks=excluded)
