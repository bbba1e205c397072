"""The interpreter workflow with an ungated behaviour change, to prove replay catches it."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from dvt_adapters_temporal.wire import RunInput, RunResult
from dvt_adapters_temporal.workflow import WORKFLOW_NAME, DvtRunWorkflow


@workflow.defn(name=WORKFLOW_NAME, sandboxed=True)
class ChangedWithoutPatch(DvtRunWorkflow):
    """An extra timer before each batch of commands, not gated with workflow.patched."""

    @workflow.run
    async def run(self, inp: RunInput) -> RunResult:
        """Same entry point as the real workflow."""
        return await super().run(inp)

    async def _execute(self, commands: Any) -> None:
        await workflow.sleep(0.001)
        await super()._execute(commands)
