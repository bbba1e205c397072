"""Handlers the artifact end-to-end tests run: one that puts a report, one that forges a ref."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from dvt_engine import HandlerRegistry
from dvt_engine.models.snapshot import ArtifactRef
from dvt_engine.ports import StepContext, StepResult
from dvt_engine.steps import HandlerFailure

REPORT = b"region,total\nnorth,1200\nsouth,800\n" * 1000

#: The refs each attempt of ``report.export`` put, in order (cleared by ``report_registry``).
PUT: list[ArtifactRef] = []


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 4096):
        yield data[start:start + 4096]


def report_registry() -> HandlerRegistry:
    """``report.export`` streams REPORT into ctx.artifacts and fails its first engine attempt
    after the put; ``report.forged`` returns a ref to bytes it never stored."""
    PUT.clear()
    registry = HandlerRegistry()

    @registry.handler("report.export")
    async def export(ctx: StepContext) -> StepResult:
        ref = await ctx.artifacts.put(_chunks(REPORT), kind="report", media_type="text/csv")
        PUT.append(ref)
        if ctx.engine_attempt_id == 1:
            raise HandlerFailure("WAREHOUSE_BUSY", "first attempt fails after the put")
        return StepResult(output={"rows": 2000}, artifacts=[ref])

    @registry.handler("report.forged")
    async def forged(ctx: StepContext) -> StepResult:
        real = await ctx.artifacts.put(b"real", kind="report")
        digest = hashlib.sha256(b"never stored").hexdigest()
        return StepResult(artifacts=[real.model_copy(update={
            "uri": real.uri.replace(real.sha256 or "", digest), "sha256": digest})])

    return registry
