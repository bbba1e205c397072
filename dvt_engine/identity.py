"""RunIdentity: whose run something belongs to (RunHeader, StepInvocation and Event all fit)."""

from __future__ import annotations

from typing import Protocol


class RunIdentity(Protocol):
    """The six identifiers every event, span and step invocation carries."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def project_id(self) -> str: ...
    @property
    def environment_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def plan_id(self) -> str: ...
    @property
    def plan_version(self) -> str: ...
