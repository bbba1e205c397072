"""Step params are checked against their kind's declared schema when a plan is validated."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from dvt_engine.builder import PlanBuilder
from dvt_engine.client import Client
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.errors import StepParamsInvalid
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_engine.steps import builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore


class CopyHandler(StepHandler):
    """A kind with a params schema: a source path and a positive count."""

    kind = "copy"
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object", "required": ["source"], "additionalProperties": False,
        "properties": {"source": {"type": "string"}, "count": {"type": "integer", "minimum": 1}},
    }

    async def run(self, ctx: StepContext) -> StepResult:
        """Echo the source."""
        return StepResult(output={"copied": ctx.params["source"]})


def engine() -> ReferenceEngine:
    registry = builtin_registry()
    registry.register("copy", CopyHandler())
    return ReferenceEngine(MemoryRunStateStore(), registry=registry)


def plan(params: dict[str, Any]) -> Any:
    return PlanBuilder("copy-plan", "1").step("a", "copy", params=params).build()


async def test_bad_params_are_reported_with_their_path_before_any_run() -> None:
    report = await engine().validate(plan({"count": 0, "extra": True}))
    assert not report.ok
    codes = {(i.code, i.path, i.step_id) for i in report.errors}
    assert ("STEP_PARAMS_INVALID", "/steps/0/params/count", "a") in codes
    assert any(i.path == "/steps/0/params" and "source" in i.message for i in report.errors)
    assert any("extra" in i.message for i in report.errors)


async def test_good_params_pass_and_a_kind_without_a_schema_takes_any() -> None:
    assert (await engine().validate(plan({"source": "s3://b/k", "count": 2}))).ok
    echo = PlanBuilder("echo-plan", "1").step("e", "echo", params={"anything": [1, {"x": None}]})
    assert (await engine().validate(echo.build())).ok


async def test_a_run_with_bad_params_is_refused_and_nothing_is_stored() -> None:
    eng = engine()
    client = Client(engine=eng, store=eng.store, tenant="t1")
    with pytest.raises(StepParamsInvalid) as refused:
        await client.start_run(plan({"source": 7}), run_id="r1")
    assert refused.value.details["path"] == "/steps/0/params/source"
    assert await eng.store.list_runs("t1") == []
    done = await client.start_run(plan({"source": "here"}), run_id="r2")
    assert (await done.result()).status == "COMPLETED"
