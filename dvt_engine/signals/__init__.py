"""Operator signals: the shared decision service and the default role-based authorizer."""

from dvt_engine.signals.authz import (
    DEFAULT_POLICY,
    POWER_ORDER,
    ROLE_HIERARCHY,
    RoleBasedAuthorizer,
    effective_role,
    role_satisfies,
)
from dvt_engine.signals.payloads import parse_signal_request, validate_payload
from dvt_engine.signals.rejections import raise_for_rejection, rejection_error
from dvt_engine.signals.retry_run import new_run_context, retry_run_id, retry_run_request_id
from dvt_engine.signals.rules import StateVerdict, check_state
from dvt_engine.signals.service import (
    RATE_LIMIT_CAPABILITY,
    AcceptedSignal,
    SignalService,
    SignalVerdict,
    decision_from_record,
)

__all__ = [
    "DEFAULT_POLICY",
    "POWER_ORDER",
    "RATE_LIMIT_CAPABILITY",
    "ROLE_HIERARCHY",
    "AcceptedSignal",
    "RoleBasedAuthorizer",
    "SignalService",
    "SignalVerdict",
    "StateVerdict",
    "check_state",
    "decision_from_record",
    "effective_role",
    "new_run_context",
    "parse_signal_request",
    "raise_for_rejection",
    "rejection_error",
    "retry_run_id",
    "retry_run_request_id",
    "role_satisfies",
    "validate_payload",
]
