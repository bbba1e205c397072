"""From a PlanRef to a validated ExecutionPlan: fetching, integrity, validation, capabilities."""

from dvt_engine.planning.capabilities import (
    ALL_CAPABILITIES,
    EMULATIONS,
    ENGINE_CAPABILITIES,
    Emulation,
    emulation_for,
    engine_capabilities,
)
from dvt_engine.planning.fetch import (
    LoadedPlan,
    PlanLoader,
    RegistryPlanFetcher,
    encode_plan,
    store_plan,
)
from dvt_engine.planning.https import HttpsPlanFetcher
from dvt_engine.planning.uri_policy import AllowEntry, CheckedUri, UriPolicy, address_problem
from dvt_engine.planning.validation import (
    build_validation_report,
    find_cycles,
    prepare_plan,
    raise_for_report,
    report_error,
    validate_plan_document,
)

__all__ = [
    "ALL_CAPABILITIES",
    "EMULATIONS",
    "ENGINE_CAPABILITIES",
    "AllowEntry",
    "CheckedUri",
    "Emulation",
    "HttpsPlanFetcher",
    "LoadedPlan",
    "PlanLoader",
    "RegistryPlanFetcher",
    "UriPolicy",
    "address_problem",
    "build_validation_report",
    "emulation_for",
    "encode_plan",
    "engine_capabilities",
    "find_cycles",
    "prepare_plan",
    "raise_for_report",
    "report_error",
    "store_plan",
    "validate_plan_document",
]
