"""OpenTelemetry spans: names, identity attributes, nesting, and no secret in any span."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from dvt_engine import telemetry
from dvt_engine.errors import StepTimeout
from dvt_engine.eventlog import EventFactory
from dvt_engine.idempotency import run_request_key
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.run import RunContext, RunHeader
from dvt_engine.ports import StepContext
from dvt_engine.secrets import MappingSecretsProvider, resolve_refs
from dvt_engine.steps import StepInvocation, StepRunner, builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore

TENANT = "tenant-otel"
SECRET = "otel-secret-Zq81"


async def started_run(store: MemoryRunStateStore, steps: list[dict[str, Any]]) -> tuple[
        RunHeader, ExecutionPlan]:
    plan = ExecutionPlan.model_validate({
        "metadata": {"planId": "otel-plan", "planVersion": "2", "schemaVersion": "v1.2"},
        "steps": steps,
    })
    data = plan.model_dump_json(by_alias=True).encode("utf-8")
    ref = PlanRef(uri=await store.put_plan(data), sha256=hashlib.sha256(data).hexdigest(),
                  schema_version="v1.2", plan_id="otel-plan", plan_version="2")
    run_id = str(uuid.uuid4())
    header = RunHeader.for_plan(
        plan=plan, plan_ref=ref,
        context=RunContext(tenant_id=TENANT, project_id="p", environment_id="e", run_id=run_id),
        engine="reference",
        run_request_key=run_request_key(TENANT, "p", "e", "otel-plan", "2", run_id),
        created_at=datetime.now(UTC),
    )
    await store.register_run(header)
    # Straight to the store: the spans under test are the step runner's own.
    await store.append(
        EventFactory(header, emitted_by="engine").run_event("RunStarted", {"engine": "reference"}))
    return header, plan


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_step_and_append_spans_carry_identity(spans: InMemorySpanExporter) -> None:
    store = MemoryRunStateStore()
    header, plan = await started_run(store, [{"stepId": "e", "kind": "echo",
                                              "params": {"select": "orders"}}])
    inv = StepInvocation.for_step(header, plan.step("e"), engine_attempt_id=1)
    await StepRunner(store).run(inv)
    finished = spans.get_finished_spans()
    (step,) = by_name(finished, "dvt.step")
    appends = by_name(finished, "dvt.append")
    assert attrs(step) == {
        "dvt.tenant_id": TENANT, "dvt.project_id": "p", "dvt.environment_id": "e",
        "dvt.run_id": header.run_id, "dvt.plan_id": "otel-plan", "dvt.plan_version": "2",
        "dvt.step_id": "e", "dvt.step_kind": "echo", "dvt.logical_attempt_id": 1,
        "dvt.engine_attempt_id": 1, "dvt.outcome": "succeeded", "dvt.duplicate": False,
    }
    assert [attrs(a)["dvt.event_type"] for a in appends] == ["StepStarted", "StepCompleted"]
    assert step.context is not None
    for append in appends:
        assert append.parent is not None
        assert append.parent.span_id == step.context.span_id
        assert attrs(append)["dvt.run_id"] == header.run_id
        assert attrs(append)["dvt.step_id"] == "e"
        assert isinstance(attrs(append)["dvt.run_seq"], int)
    # Params never become attributes.
    assert all("orders" not in str(v) for s in finished for v in attrs(s).values())


async def test_retry_attempt_span_records_outcome_and_code(spans: InMemorySpanExporter) -> None:
    store = MemoryRunStateStore()
    header, plan = await started_run(store, [{"stepId": "f", "kind": "fail",
                                              "params": {"code": "FLAKY"},
                                              "retry": {"maxAttempts": 3}}])
    await StepRunner(store).run(
        StepInvocation.for_step(header, plan.step("f"), engine_attempt_id=2))
    finished = spans.get_finished_spans()
    (step,) = by_name(finished, "dvt.step")
    assert attrs(step)["dvt.outcome"] == "retry"
    assert attrs(step)["dvt.error_code"] == "FLAKY"
    assert attrs(step)["dvt.engine_attempt_id"] == 2
    assert [attrs(a)["dvt.event_type"] for a in by_name(finished, "dvt.append")] == [
        "StepStarted"]


async def test_no_secret_reaches_any_span(spans: InMemorySpanExporter) -> None:
    async def leak(ctx: StepContext) -> dict[str, Any]:
        resolved = await resolve_refs(dict(ctx.params), ctx.secret)
        return {"echoed": resolved}

    async def leak_error(ctx: StepContext) -> None:
        raise RuntimeError("password was " + await ctx.secret("vault:pw"))

    store = MemoryRunStateStore()
    params = {"pw": {"secretRef": "vault:pw"}}
    header, plan = await started_run(store, [
        {"stepId": "a", "kind": "leak", "params": params},
        {"stepId": "b", "kind": "leak.error", "params": params},
    ])
    registry = builtin_registry()
    registry.register("leak", leak)
    registry.register("leak.error", leak_error)
    runner = StepRunner(store, registry, secrets=MappingSecretsProvider({"vault:pw": SECRET}))
    for step_id in ("a", "b"):
        await runner.run(StepInvocation.for_step(header, plan.step(step_id)))
    finished = spans.get_finished_spans()
    assert len(by_name(finished, "dvt.step")) == 2
    assert len(by_name(finished, "dvt.append")) == 4
    for span in finished:
        assert SECRET not in span.to_json(), span.name
    for event in await store.fetch_events(TENANT, header.run_id):
        assert SECRET not in event.model_dump_json()


def test_exception_marks_span_by_code_without_its_text(spans: InMemorySpanExporter) -> None:
    identity = _Identity()
    with (pytest.raises(StepTimeout),
          telemetry.dvt_span("dvt.step", identity, attributes={"dvt.step_id": "s"})):
        raise StepTimeout(f"took too long with {SECRET}")
    with pytest.raises(KeyError), telemetry.dvt_span("dvt.append", identity):
        raise KeyError(SECRET)
    first, second = spans.get_finished_spans()
    assert first.status.status_code == StatusCode.ERROR
    assert first.status.description == "STEP_TIMEOUT"
    assert attrs(first)["dvt.error_code"] == "STEP_TIMEOUT"
    assert second.status.description == "KeyError"
    for span in (first, second):
        assert span.events == ()
        assert SECRET not in span.to_json()


def test_start_run_and_signal_spans(spans: InMemorySpanExporter) -> None:
    identity = _Identity()
    with telemetry.start_run_span(identity, engine="reference"):
        pass
    with telemetry.signal_span(identity, signal_type="APPROVE_STEP", signal_id="sig-9",
                               step_id="gate"):
        pass
    with telemetry.signal_span(identity, signal_type="PAUSE"):
        pass
    start, approve, pause = spans.get_finished_spans()
    assert start.name == "dvt.start_run"
    assert attrs(start)["dvt.engine"] == "reference"
    assert attrs(start)["dvt.run_id"] == "run-1"
    assert approve.name == "dvt.signal"
    assert attrs(approve)["dvt.signal_type"] == "APPROVE_STEP"
    assert attrs(approve)["dvt.signal_id"] == "sig-9"
    assert attrs(approve)["dvt.step_id"] == "gate"
    assert "dvt.step_id" not in attrs(pause)
    assert attrs(pause)["dvt.tenant_id"] == "t-1"


async def test_spans_are_harmless_without_a_provider() -> None:
    telemetry.use_tracer_provider(None)
    store = MemoryRunStateStore()
    header, plan = await started_run(store, [{"stepId": "n", "kind": "noop"}])
    outcome = await StepRunner(store).run(StepInvocation.for_step(header, plan.step("n")))
    assert outcome.status == "succeeded"


def test_dvt_engine_imports_no_opentelemetry_sdk() -> None:
    code = (
        "import sys, dvt_engine, dvt_engine.telemetry, dvt_engine.steps, dvt_engine.secrets;"
        "bad = sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


class _Identity:
    tenant_id = "t-1"
    project_id = "p-1"
    environment_id = "e-1"
    run_id = "run-1"
    plan_id = "plan-1"
    plan_version = "1"


def test_without_a_provider_a_span_is_the_current_one_and_a_later_provider_is_seen() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    assert not telemetry.tracing_configured()
    outer = trace.get_current_span()
    with telemetry.dvt_span(telemetry.SPAN_STEP) as span:
        assert span is outer
        assert trace.get_current_span() is outer
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_tracer_provider(provider)
    try:
        assert telemetry.tracing_configured()
        recording: list[bool] = []

        def failing_step() -> None:
            with telemetry.dvt_span(telemetry.SPAN_STEP) as span:
                recording.append(span is not outer and span.is_recording())
                raise StepTimeout("slow")

        with pytest.raises(StepTimeout):
            failing_step()
        assert recording == [True]
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()
    [recorded] = exporter.get_finished_spans()
    assert recorded.name == telemetry.SPAN_STEP
    assert recorded.status.status_code is StatusCode.ERROR
