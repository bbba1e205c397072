"""The validation report: data returned by validate(plan, engine) and shown by the CLI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from dvt_engine.models.base import DvtModel

CapabilityResolution = Literal["satisfied", "rejected", "emulated", "degraded"]


class ValidationIssue(DvtModel):
    """One problem (error) or remark (warning) about a plan."""

    code: str
    message: str
    severity: Literal["error", "warning"] = "error"
    path: str | None = None
    step_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class CapabilityCheck(DvtModel):
    """How the plan's required capabilities meet the engine's."""

    required: tuple[str, ...] = ()
    supported: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    fallback_behavior: str = "reject"
    resolution: CapabilityResolution = "satisfied"
    #: Plan v1.3 flow features the plan uses, each "native", "emulated" or "degraded" here.
    flow_features: dict[str, str] = Field(default_factory=dict)


class ValidationReport(DvtModel):
    """Whether a plan can run on an engine, and every reason why not."""

    ok: bool
    engine: str
    plan_id: str | None = None
    plan_version: str | None = None
    schema_version: str | None = None
    plan_sha256: str | None = None
    issues: tuple[ValidationIssue, ...] = ()
    capabilities: CapabilityCheck | None = None

    @property
    def errors(self) -> tuple[ValidationIssue, ...]:
        """Issues that stop the plan from running."""
        return tuple(i for i in self.issues if i.severity == "error")

    @property
    def warnings(self) -> tuple[ValidationIssue, ...]:
        """Issues recorded but not blocking (e.g. a degraded capability)."""
        return tuple(i for i in self.issues if i.severity == "warning")
