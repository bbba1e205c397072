"""The workflow type every plan runs as: the part the sandbox loads for each workflow run.

The sandbox imports a workflow's module afresh for every workflow run (each continue-as-new
included). The interpreter workflow's body is large, so it lives in
``dvt_adapters_temporal.workflow_body``, passed through and imported once per worker; this module
only declares the workflow type on it. Loading it costs a few hundred microseconds a run where
the whole body cost about 3 ms to compile (when the installation carries no bytecode) and
0.6 ms to execute.
"""

from __future__ import annotations

from temporalio import workflow

# Names are imported from their modules: a module taken from its package (``from pkg import
# mod``) is re-imported inside the sandbox for every run, and a cache in it lost with it.
with workflow.unsafe.imports_passed_through():
    from dvt_adapters_temporal.wire import RunInput, RunResult
    from dvt_adapters_temporal.workflow_body import WORKFLOW_NAME, RunWorkflowBody

__all__ = ["WORKFLOW_NAME", "DvtRunWorkflow"]


@workflow.defn(name=WORKFLOW_NAME, sandboxed=True)
class DvtRunWorkflow(RunWorkflowBody):
    """Runs one plan: validates it, walks its DAG, applies operator signals."""

    @workflow.run
    async def run(self, inp: RunInput) -> RunResult:
        """Run the plan of ``inp`` to its end, or continue as new when its history is full."""
        return await super().run(inp)
