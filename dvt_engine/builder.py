"""PlanBuilder: a plan written in Python that is the same document as the JSON a person writes.

Only what is set is emitted (defaults stay implicit, as in a hand-written file), so
``builder.to_json()`` is byte-identical to a plan file kept as ``json.dumps(doc, indent=2,
sort_keys=True)`` and ``build()`` stores under the same plan digest as that file's document.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from dvt_engine.models.plan import (
    FailurePolicy,
    FallbackBehavior,
    JoinMode,
    RetryPolicy,
    SkipRule,
)
from dvt_engine.planning.fetch import encode_plan
from dvt_engine.planning.validation import validate_plan_document
from dvt_engine.steps.builtins import APPROVAL_KIND

DEFAULT_SCHEMA_VERSION = "v1.2"


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


class PlanBuilder:
    """Build an execution plan step by step; ``build()`` returns the validated document.

    >>> plan = (PlanBuilder("marts", "1")
    ...         .step("orders", "dbt.run", params={"select": "orders"},
    ...               retry=RetryPolicy(max_attempts=3), timeout_ms=600_000)
    ...         .approval("signoff", depends_on=["orders"])
    ...         .step("publish", "echo", depends_on=["signoff"])
    ...         .build())
    """

    def __init__(
        self,
        plan_id: str,
        version: str,
        *,
        schema_version: str = DEFAULT_SCHEMA_VERSION,
        description: str | None = None,
        failure_policy: FailurePolicy | None = None,
        operator_timeout_ms: int | None = None,
        requires_approval: bool | None = None,
        requires_capabilities: Iterable[str] | None = None,
        fallback_behavior: FallbackBehavior | None = None,
        target_adapter: str | None = None,
        params: Mapping[str, Any] | None = None,
        max_parallel: int | None = None,
        concurrency_groups: Mapping[str, int] | None = None,
        skip_rule: SkipRule | None = None,
        resource_classes: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._metadata: dict[str, Any] = {
            "planId": plan_id, "planVersion": version, "schemaVersion": schema_version,
        }
        _set(self._metadata, "description", description)
        _set(self._metadata, "failurePolicy", failure_policy)
        _set(self._metadata, "operatorTimeoutMs", operator_timeout_ms)
        _set(self._metadata, "requiresApproval", requires_approval)
        if requires_capabilities is not None:
            self._metadata["requiresCapabilities"] = list(requires_capabilities)
        _set(self._metadata, "fallbackBehavior", fallback_behavior)
        _set(self._metadata, "targetAdapter", target_adapter)
        # Plan v1.3 (docs/plans.md): pass schema_version="v1.3" with them.
        _set(self._metadata, "maxParallel", max_parallel)
        if concurrency_groups is not None:
            self._metadata["concurrencyGroups"] = dict(concurrency_groups)
        _set(self._metadata, "skipRule", skip_rule)
        if resource_classes is not None:
            self._metadata["resourceClasses"] = {name: dict(spec)
                                                 for name, spec in resource_classes.items()}
        self._params = copy.deepcopy(dict(params)) if params is not None else None
        self._steps: list[dict[str, Any]] = []

    def step(
        self,
        step_id: str,
        kind: str,
        *,
        depends_on: Iterable[str] = (),
        params: Mapping[str, Any] | None = None,
        retry: RetryPolicy | Mapping[str, Any] | None = None,
        timeout_ms: int | None = None,
        task_queue: str | None = None,
        cost_units: float | None = None,
        description: str | None = None,
        concurrency_group: str | None = None,
        join: JoinMode | Mapping[str, Any] | None = None,
        when: str | None = None,
        for_each: Mapping[str, Any] | None = None,
        resource_class: str | None = None,
        priority: int | None = None,
    ) -> PlanBuilder:
        """Add a step of ``kind`` that waits for ``depends_on``; returns the builder.

        ``for_each`` is the plan's ``forEach`` object as written (``{"step": ..., "path": ...,
        "maxItems": ...}``)."""
        spec: dict[str, Any] = {"stepId": step_id, "kind": kind}
        after = list(depends_on)
        if after:
            spec["dependsOn"] = after
        if params is not None:
            spec["params"] = copy.deepcopy(dict(params))  # later edits must not leak in
        if retry is not None:
            policy = retry if isinstance(retry, RetryPolicy) else RetryPolicy.model_validate(retry)
            spec["retry"] = policy.model_dump(mode="json", by_alias=True, exclude_unset=True)
        _set(spec, "timeoutMs", timeout_ms)
        _set(spec, "taskQueue", task_queue)
        if cost_units is not None:
            spec["costHint"] = {"units": cost_units}
        _set(spec, "description", description)
        _set(spec, "concurrencyGroup", concurrency_group)
        if join is not None:
            spec["join"] = join if isinstance(join, str) else dict(join)
        _set(spec, "when", when)
        if for_each is not None:
            spec["forEach"] = copy.deepcopy(dict(for_each))
        _set(spec, "resourceClass", resource_class)
        _set(spec, "priority", priority)
        self._steps.append(spec)
        return self

    def approval(
        self,
        step_id: str,
        *,
        depends_on: Iterable[str] = (),
        timeout_ms: int | None = None,
        params: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> PlanBuilder:
        """Add an approval gate: the run waits until APPROVE_STEP approves or rejects it."""
        return self.step(step_id, APPROVAL_KIND, depends_on=depends_on, params=params,
                         timeout_ms=timeout_ms, description=description)

    def document(self) -> dict[str, Any]:
        """The plan document as built so far, unvalidated."""
        doc: dict[str, Any] = {"metadata": dict(self._metadata),
                               "steps": [dict(s) for s in self._steps]}
        if self._params is not None:
            doc["params"] = dict(self._params)
        copied: dict[str, Any] = json.loads(json.dumps(doc))  # a deep, JSON-only copy
        return copied

    def build(self) -> dict[str, Any]:
        """The validated plan document (PLAN_INVALID, SCHEMA_VALIDATION_FAILED, ... otherwise)."""
        doc = self.document()
        validate_plan_document(encode_plan(doc))
        return doc

    def to_bytes(self) -> bytes:
        """The bytes dvt stores for this plan (compact, sorted keys): their sha256 is the digest."""
        return encode_plan(self.build())

    def to_json(self) -> str:
        """The plan as a file: two-space indent, sorted keys, final newline."""
        return json.dumps(self.build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
