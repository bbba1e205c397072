"""RETRY_RUN: the deterministic identity of the new run an accepted retry starts.

The old run is untouched except for its decision record. The new run's id is the payload's
``newRunId`` when the client chose one, else derived from the signal key; its runRequestId is
derived from the signal key too. Because start_run is idempotent on the run-request key, an
engine that applies the same accepted RETRY_RUN twice (a crash between the decision record and
the start) starts one run, not two. The signal key, not the bare signalId, makes the request id
so that two different runs retried with the same client signalId never share a new run.
"""

from __future__ import annotations

import uuid
from typing import Any

from dvt_engine.errors import UsageError
from dvt_engine.idempotency import signal_key
from dvt_engine.models.run import RunContext, RunHeader
from dvt_engine.models.signals import AcceptedSignal, SignalType

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dvt:signals:retry-run")
RUN_REQUEST_PREFIX = "retry-run-"


def retry_run_id(
    tenant_id: str, run_id: str, signal_id: str, payload: dict[str, Any] | None = None
) -> str:
    """The runId of the run a RETRY_RUN starts: ``payload.newRunId`` or a UUID of the key."""
    chosen = (payload or {}).get("newRunId")
    if isinstance(chosen, str) and chosen:
        return chosen
    return str(uuid.uuid5(_NAMESPACE, signal_key(tenant_id, run_id, signal_id)))


def retry_run_request_id(tenant_id: str, run_id: str, signal_id: str) -> str:
    """The runRequestId of the new run: one per (tenant, old run, signalId)."""
    return RUN_REQUEST_PREFIX + signal_key(tenant_id, run_id, signal_id)


def new_run_context(header: RunHeader, accepted: AcceptedSignal) -> RunContext:
    """The RunContext of the run an accepted RETRY_RUN on ``header``'s run starts."""
    if accepted.type != SignalType.RETRY_RUN:
        raise UsageError(
            f"new_run_context needs an accepted RETRY_RUN, got {accepted.type}",
            details={"signalId": accepted.signal_id, "signalType": str(accepted.type)},
        )
    if accepted.run_id != header.run_id or accepted.tenant_id != header.tenant_id:
        raise UsageError(
            "the accepted signal belongs to another run",
            details={"signalId": accepted.signal_id, "runId": header.run_id},
        )
    return RunContext(
        tenant_id=header.tenant_id,
        project_id=header.project_id,
        environment_id=header.environment_id,
        run_id=retry_run_id(
            header.tenant_id, header.run_id, accepted.signal_id, accepted.payload
        ),
        run_request_id=retry_run_request_id(
            header.tenant_id, header.run_id, accepted.signal_id
        ),
        triggered_by=accepted.actor.id,
        original_run_id=header.run_id,
        params=dict(header.params),
        labels=dict(header.labels),
    )
