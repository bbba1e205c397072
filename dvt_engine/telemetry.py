"""OpenTelemetry spans for dvt (API only: the host chooses and configures the SDK).

Spans carry identity only: tenant, project, environment, run, plan, step, attempts, event type,
outcome status and error code. They never carry params, outputs, error messages or exception
text, because any of those may hold a resolved secret.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)
from opentelemetry.util.types import AttributeValue

from dvt_engine.identity import RunIdentity as Identity
from dvt_engine.models.events import Event

TRACER_NAME = "dvt"

SPAN_START_RUN = "dvt.start_run"
SPAN_SIGNAL = "dvt.signal"
SPAN_STEP = "dvt.step"
SPAN_APPEND = "dvt.append"

ATTR_TENANT_ID = "dvt.tenant_id"
ATTR_PROJECT_ID = "dvt.project_id"
ATTR_ENVIRONMENT_ID = "dvt.environment_id"
ATTR_RUN_ID = "dvt.run_id"
ATTR_PLAN_ID = "dvt.plan_id"
ATTR_PLAN_VERSION = "dvt.plan_version"
ATTR_STEP_ID = "dvt.step_id"
ATTR_STEP_KIND = "dvt.step_kind"
ATTR_LOGICAL_ATTEMPT_ID = "dvt.logical_attempt_id"
ATTR_ENGINE_ATTEMPT_ID = "dvt.engine_attempt_id"
ATTR_EVENT_TYPE = "dvt.event_type"
ATTR_ENGINE = "dvt.engine"
ATTR_SIGNAL_TYPE = "dvt.signal_type"
ATTR_SIGNAL_ID = "dvt.signal_id"
ATTR_OUTCOME = "dvt.outcome"
ATTR_ERROR_CODE = "dvt.error_code"
ATTR_DUPLICATE = "dvt.duplicate"
ATTR_RUN_SEQ = "dvt.run_seq"

METRIC_IDEMPOTENCY_CONFLICTS = "dvt.store.idempotency_conflicts"

_provider_override: TracerProvider | None = None
_meter_provider_override: MeterProvider | None = None


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Send dvt's spans to ``provider`` instead of the global one (None restores the global)."""
    global _provider_override
    _provider_override = provider


def tracer() -> trace.Tracer:
    """dvt's tracer, from the override or the global provider (a no-op until one is set)."""
    return trace.get_tracer(TRACER_NAME, tracer_provider=_provider_override)


def tracing_configured() -> bool:
    """Whether a span opened now would reach a real provider (an SDK or the override)."""
    provider = _provider_override or trace.get_tracer_provider()
    return not isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider))


def identity_attributes(identity: Identity) -> dict[str, AttributeValue]:
    """The run identity as span attributes."""
    return {
        ATTR_TENANT_ID: identity.tenant_id,
        ATTR_PROJECT_ID: identity.project_id,
        ATTR_ENVIRONMENT_ID: identity.environment_id,
        ATTR_RUN_ID: identity.run_id,
        ATTR_PLAN_ID: identity.plan_id,
        ATTR_PLAN_VERSION: identity.plan_version,
    }


@contextmanager
def dvt_span(
    name: str,
    identity: Identity | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue | None] | None = None,
    parent: Context | None = None,
) -> Iterator[Span]:
    """Open a current span with identity attributes; an exception marks it ERROR by code only.

    ``parent`` is the context to open it in when that is not the current one (an event written
    later than it was made, with another event's append).

    Exceptions are not recorded as span events: their text may contain a secret. The status
    description is the error's stable code (DvtError) or its type name.
    """
    if not tracing_configured():
        # No SDK: the span would be a non-recording copy of the current one, so the current
        # one is handed out as is. Skipping the context switch saves most of the span's cost
        # on every step and append; a provider set later is seen by the next span.
        yield trace.get_current_span()
        return
    attrs: dict[str, AttributeValue] = identity_attributes(identity) if identity else {}
    for key, value in (attributes or {}).items():
        if value is not None:
            attrs[key] = value
    with tracer().start_as_current_span(
        name, context=parent, kind=kind, attributes=attrs, record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            code = error_code_of(exc)
            span.set_attribute(ATTR_ERROR_CODE, code)
            span.set_status(Status(StatusCode.ERROR, code))
            raise


def error_code_of(exc: BaseException) -> str:
    """A span-safe name for an exception: its dvt code, or its type name (never its text)."""
    code: Any = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return str(code)
    return type(exc).__name__


def start_run_span(
    identity: Identity, *, engine: str | None = None
) -> AbstractContextManager[Span]:
    """Span around an engine's start_run."""
    return dvt_span(SPAN_START_RUN, identity, kind=SpanKind.PRODUCER,
                    attributes={ATTR_ENGINE: engine})


def signal_span(
    identity: Identity,
    *,
    signal_type: str,
    signal_id: str | None = None,
    step_id: str | None = None,
) -> AbstractContextManager[Span]:
    """Span around deciding and applying one signal."""
    return dvt_span(
        SPAN_SIGNAL,
        identity,
        attributes={ATTR_SIGNAL_TYPE: signal_type, ATTR_SIGNAL_ID: signal_id,
                    ATTR_STEP_ID: step_id},
    )


def step_span(
    identity: Identity,
    *,
    step_id: str,
    kind: str | None = None,
    logical_attempt_id: int | None = None,
    engine_attempt_id: int | None = None,
) -> AbstractContextManager[Span]:
    """Span around one engine attempt of one step."""
    return dvt_span(
        SPAN_STEP,
        identity,
        kind=SpanKind.CONSUMER,
        attributes={
            ATTR_STEP_ID: step_id,
            ATTR_STEP_KIND: kind,
            ATTR_LOGICAL_ATTEMPT_ID: logical_attempt_id,
            ATTR_ENGINE_ATTEMPT_ID: engine_attempt_id,
        },
    )


#: A trace context, as the modules outside this one name it.
TraceContext = Context


def current_context() -> Context:
    """The active trace context, to parent a span that is opened later, elsewhere."""
    return otel_context.get_current()


def append_span(event: Event, parent: Context | None = None) -> AbstractContextManager[Span]:
    """Span around appending one event (an ``Event``) to the store (opened in ``parent``)."""
    return dvt_span(
        SPAN_APPEND,
        event,
        parent=parent,
        kind=SpanKind.CLIENT,
        attributes={
            ATTR_EVENT_TYPE: event.event_type,
            ATTR_STEP_ID: event.step_id,
            ATTR_LOGICAL_ATTEMPT_ID: event.logical_attempt_id,
            ATTR_ENGINE_ATTEMPT_ID: event.engine_attempt_id,
        },
    )


def use_meter_provider(provider: MeterProvider | None) -> None:
    """Send dvt's metrics to ``provider`` instead of the global one (None restores the global)."""
    global _meter_provider_override
    _meter_provider_override = provider


def meter() -> metrics.Meter:
    """dvt's meter, from the override or the global provider (a no-op until one is set)."""
    return metrics.get_meter(TRACER_NAME, meter_provider=_meter_provider_override)


def count_idempotency_conflict(event: Event, store: str) -> None:
    """Count one append refused because its key was stored with a different event."""
    # Created per call so a provider installed later (or an override in tests) is used.
    counter = meter().create_counter(
        METRIC_IDEMPOTENCY_CONFLICTS,
        unit="{conflict}",
        description="Appends refused: the idempotency key is stored with another event",
    )
    counter.add(
        1,
        {ATTR_TENANT_ID: event.tenant_id, ATTR_EVENT_TYPE: event.event_type, "dvt.store": store},
    )
