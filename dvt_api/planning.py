"""Plan checks the routes share: the validation report for the served engine, and storing."""

from __future__ import annotations

from typing import Any

from dvt_api.problems import ApiProblem
from dvt_api.services import Services
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.validation import ValidationReport
from dvt_engine.planning.capabilities import engine_capabilities
from dvt_engine.planning.fetch import store_plan
from dvt_engine.planning.report import build_validation_report

PLAN_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "description": "An execution plan document (schemaVersion v1.x)"}}}},
}
KNOWN_ENGINES = ("reference", "temporal", "conductor")


def report_for(svc: Services, data: bytes | dict[str, Any], engine: str | None = None
               ) -> ValidationReport:
    """The validation report of a plan for ``engine`` (default: the served engine)."""
    name = engine or svc.settings.engine_name
    if name not in KNOWN_ENGINES:
        raise ApiProblem(422, "ENGINE_NOT_FOUND", f"unknown engine {name[:50]!r}",
                         errors=[{"path": "query/engine", "message": "unknown engine"}])
    caps = svc.engine.capabilities if name == svc.settings.engine_name else \
        engine_capabilities(name)
    return build_validation_report(data, engine=name, capabilities=caps,
                                   known_kinds=svc.registry.kinds(),
                                   params_schemas=svc.registry.params_schemas())


def refused(report: ValidationReport) -> ApiProblem:
    """A refused plan: 422 with the first error's code and every issue in ``errors``."""
    first = report.errors[0]
    return ApiProblem(422, first.code, first.message, errors=[
        {"path": i.path or "", "message": i.message} for i in report.errors][:100])


async def accept_plan(svc: Services, tenant_id: str, data: bytes | dict[str, Any]
                      ) -> tuple[PlanRef, bool]:
    """Check a plan for the served engine and store it for the tenant; (ref, newly stored)."""
    report = report_for(svc, data)
    if not report.ok:
        raise refused(report)
    ref = await store_plan(svc.store, data)
    return ref, await svc.plans.remember_plan(tenant_id, ref.sha256)


def ref_body(ref: PlanRef) -> dict[str, str]:
    """A PlanRef as the API shows it."""
    return {"planId": ref.plan_id, "planVersion": ref.plan_version, "sha256": ref.sha256,
            "uri": ref.uri}


def unknown_plan() -> ApiProblem:
    """The one answer for a plan the tenant has not stored (missing, or another tenant's)."""
    return ApiProblem(404, "PLAN_NOT_FOUND", "plan not found")
