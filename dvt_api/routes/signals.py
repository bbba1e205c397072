"""Signals to a run: operator signals and approvals, decided and recorded by the engine."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends
from pydantic import ValidationError
from starlette.responses import JSONResponse

from dvt_api.auth import Principal, principal, services
from dvt_api.problems import ApiProblem, from_dvt_error, run_not_found
from dvt_api.routes import limits
from dvt_api.routes.runs import RUN_ID
from dvt_api.schemas import SignalAnswer, SignalBody
from dvt_api.services import Services
from dvt_engine.access import ApiRole
from dvt_engine.client import Client
from dvt_engine.errors import ERROR_CLASSES, ErrorCode, SignalInvalidPayload
from dvt_engine.models.signals import (
    Actor,
    ApproveRunPayload,
    ApproveStepPayload,
    CancelPayload,
    CustomSignalPayload,
    PausePayload,
    ResumePayload,
    RetryStepPayload,
    Role,
    SignalPayload,
    SkipStepPayload,
)

router = APIRouter(prefix="/v1/runs", tags=["signals"])

#: The API role each signal needs, and the core role the actor is given for it. The HTTP
#: `operator` may retry and skip steps (API section 2), which the core reserves for `engineer`;
#: the actor gets the least core role that carries the signal, never more.
SIGNAL_ROLES: dict[str, tuple[ApiRole, Role]] = {
    **{t: (ApiRole.OPERATOR, Role.OPERATOR) for t in ("PAUSE", "RESUME", "CANCEL")},
    **{t: (ApiRole.OPERATOR, Role.ENGINEER) for t in ("RETRY_STEP", "SKIP_STEP")},
    **{t: (ApiRole.APPROVER, Role.APPROVER)
       for t in ("APPROVE_STEP", "REJECT_STEP", "APPROVE_RUN")},
}
#: A CUSTOM signal's roles come from the run's plan: the actor carries the core roles each of
#: the key's roles stands for, and the core decides (SIGNAL_UNAUTHORIZED, recorded).
CUSTOM_ROLES: dict[ApiRole, tuple[Role, ...]] = {
    ApiRole.OPERATOR: (Role.OPERATOR, Role.ENGINEER),
    ApiRole.APPROVER: (Role.APPROVER,),
    ApiRole.ADMIN: (Role.ADMIN,),
}


def _custom_actor(who: Principal) -> Actor:
    """The actor of a CUSTOM signal; 403 for a key that may send no signal at all."""
    roles = sorted({r for api in who.roles for r in CUSTOM_ROLES.get(api, ())})
    if not roles:
        who.require(ApiRole.OPERATOR)
    return Actor(id=who.key_id, roles=tuple(roles))


def payload_of(body: SignalBody) -> SignalPayload:
    """The core's typed payload; SIGNAL_INVALID_PAYLOAD when a field is missing or wrong."""
    step, reason = body.step_id, body.reason
    try:
        match body.type:
            case "PAUSE":
                return PausePayload(reason=reason)
            case "RESUME":
                return ResumePayload()
            case "CANCEL":
                return CancelPayload(reason=reason)
            case "RETRY_STEP":
                return RetryStepPayload(step_id=step, reason=reason)
            case "SKIP_STEP":
                return SkipStepPayload(step_id=step, reason=reason)
            case "CUSTOM":
                return CustomSignalPayload(name=body.name, data=body.payload or {})
            case "APPROVE_STEP" | "REJECT_STEP":
                decision = "approve" if body.type == "APPROVE_STEP" else "reject"
                return ApproveStepPayload(step_id=step, decision=decision,
                                          comment=reason)
            case _:
                return ApproveRunPayload(decision="approve", comment=reason)
    except ValidationError as exc:
        raise SignalInvalidPayload(
            f"{body.type} needs " + ", ".join(str(e["loc"][-1]) for e in exc.errors()),
            details={"errors": [{"path": "body/" + "/".join(str(p) for p in e["loc"]),
                                 "message": e["msg"]} for e in exc.errors()]}) from None


@router.post("/{runId}/signals", status_code=202, response_model=SignalAnswer,
             summary="Send a signal to a run")
async def send_signal(body: SignalBody, run_id: str = RUN_ID,
                      who: Principal = Depends(principal),
                      svc: Services = Depends(services)) -> JSONResponse:
    """Decide a signal; 202 with the decision, or the refusal's code as problem+json."""
    api_role, core_role = SIGNAL_ROLES.get(body.type, (ApiRole.OPERATOR, Role.OPERATOR))
    if await svc.store.get_run(who.tenant_id, run_id) is None:
        # A QUEUED run takes one signal: CANCEL, which takes it out of its queue.
        waiting = await limits.queued(svc, who.tenant_id, run_id)
        if waiting is None:
            raise run_not_found()
        who.require(api_role)
        return await _queued_signal(svc, who, body, run_id)
    if body.type == "CUSTOM":
        actor = _custom_actor(who)
    else:
        who.require(api_role)
        actor = Actor(id=who.key_id, roles=(core_role,))
    await limits.take_signal(svc, who.tenant_id)
    payload = payload_of(body)
    client = Client(engine=svc.engine, store=svc.store, tenant=who.tenant_id)
    decision = await client.get_run(run_id).signal(
        payload, signal_id=body.signal_id or str(uuid.uuid4()), actor=actor)
    if not decision.accepted:
        code = decision.error_code or ErrorCode.SIGNAL_INVALID_PAYLOAD
        try:
            error = ERROR_CLASSES[ErrorCode(code)](decision.message or code)
        except (ValueError, KeyError):
            raise ApiProblem(409, code, decision.message or "signal refused") from None
        raise from_dvt_error(error)
    answer = SignalAnswer(signal_id=decision.signal_id,
                          decision="no_op" if decision.no_op else "accepted",
                          duplicate=decision.duplicate, run_seq=decision.run_seq)
    return JSONResponse(answer.model_dump(mode="json", by_alias=True), status_code=202)


async def _queued_signal(svc: Services, who: Principal, body: SignalBody,
                         run_id: str) -> JSONResponse:
    """CANCEL of a run still in its queue; any other signal waits for the run to start."""
    assert svc.admission is not None
    if body.type != "CANCEL":
        raise ApiProblem(409, ErrorCode.ILLEGAL_TRANSITION,
                         f"{body.type} is not allowed while the run is QUEUED")
    await limits.take_signal(svc, who.tenant_id)
    if not await svc.admission.cancel_queued(who.tenant_id, run_id):
        raise ApiProblem(409, ErrorCode.RUN_TERMINAL, "the run is no longer waiting in its queue")
    answer = SignalAnswer(signal_id=body.signal_id or str(uuid.uuid4()), decision="accepted",
                          duplicate=False, run_seq=None)
    return JSONResponse(answer.model_dump(mode="json", by_alias=True), status_code=202)
