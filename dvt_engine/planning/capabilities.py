"""Capability names (contract §9), what each engine declares, and the documented emulations.

A plan lists the capabilities it needs in ``metadata.requiresCapabilities``. An engine that lacks
one runs the plan only when the plan's ``fallbackBehavior`` allows it: ``emulate`` uses the
emulation written down here (when the engine has what the emulation builds on), ``degrade`` runs
without it and records a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SIGNAL_PAUSE_NATIVE = "signal.pause.native"
SIGNAL_PAUSE_EMULATED = "signal.pause.emulated"
CANCEL_COOPERATIVE = "cancel.cooperative"
CANCEL_FORCED = "cancel.forced"
WORKFLOW_FAN_PARALLEL = "workflow.fan.parallel"
WORKFLOW_FAN_DYNAMIC = "workflow.fan.dynamic"
WORKFLOW_CHILD_WORKFLOWS = "workflow.child.workflows"
WORKFLOW_CONTINUE_AS_NEW = "workflow.continue.as.new"
QUERY_WORKFLOW_STATE = "query.workflow.state"
QUERY_TASK_STATE = "query.task.state"
REPLAY_FULL = "replay.full"
REPLAY_TASK = "replay.task"
SIGNALS_RATE_LIMIT = "signals.rate.limit"

ALL_CAPABILITIES: frozenset[str] = frozenset(
    {
        SIGNAL_PAUSE_NATIVE,
        SIGNAL_PAUSE_EMULATED,
        CANCEL_COOPERATIVE,
        CANCEL_FORCED,
        WORKFLOW_FAN_PARALLEL,
        WORKFLOW_FAN_DYNAMIC,
        WORKFLOW_CHILD_WORKFLOWS,
        WORKFLOW_CONTINUE_AS_NEW,
        QUERY_WORKFLOW_STATE,
        QUERY_TASK_STATE,
        REPLAY_FULL,
        REPLAY_TASK,
        SIGNALS_RATE_LIMIT,
    }
)

TEMPORAL_CAPABILITIES: frozenset[str] = frozenset(
    {
        SIGNAL_PAUSE_NATIVE,
        CANCEL_COOPERATIVE,
        WORKFLOW_FAN_PARALLEL,
        WORKFLOW_FAN_DYNAMIC,
        WORKFLOW_CHILD_WORKFLOWS,
        QUERY_WORKFLOW_STATE,
        REPLAY_FULL,
        WORKFLOW_CONTINUE_AS_NEW,
        SIGNALS_RATE_LIMIT,
    }
)

CONDUCTOR_CAPABILITIES: frozenset[str] = frozenset(
    {
        SIGNAL_PAUSE_EMULATED,
        CANCEL_FORCED,
        WORKFLOW_FAN_PARALLEL,
        QUERY_TASK_STATE,
        REPLAY_TASK,
        SIGNALS_RATE_LIMIT,
    }
)

# The reference engine runs every step in-process on asyncio, so it can honour every capability:
# pause stops scheduling at once (native) and lets running steps drain (emulated); cancel asks
# steps to stop (cooperative) and then cancels their tasks (forced); independent steps run as
# concurrent tasks; the run's state is the store's snapshot (query) and is rebuilt from the log
# (replay); it keeps no engine history, so continue-as-new is trivially satisfied.
REFERENCE_CAPABILITIES: frozenset[str] = ALL_CAPABILITIES

ENGINE_CAPABILITIES: Mapping[str, frozenset[str]] = {
    "reference": REFERENCE_CAPABILITIES,
    "temporal": TEMPORAL_CAPABILITIES,
    "conductor": CONDUCTOR_CAPABILITIES,
}


@dataclass(frozen=True)
class Emulation:
    """How dvt stands in for a capability an engine lacks, and what that emulation needs."""

    capability: str
    description: str
    # The engine must support this capability for the emulation to work (None: nothing needed).
    via: str | None = None

    def available_on(self, capabilities: frozenset[str]) -> bool:
        """True when an engine with ``capabilities`` can run this emulation."""
        return self.via is None or self.via in capabilities


EMULATIONS: Mapping[str, Emulation] = {
    e.capability: e
    for e in (
        Emulation(
            SIGNAL_PAUSE_NATIVE,
            "pause by draining: no new step is scheduled, steps already running finish "
            "(PAUSED with substatus DRAINING until they settle)",
            via=SIGNAL_PAUSE_EMULATED,
        ),
        Emulation(
            SIGNAL_PAUSE_EMULATED,
            "native pause is at least as strong: no new step is scheduled after RunPaused",
            via=SIGNAL_PAUSE_NATIVE,
        ),
        Emulation(
            CANCEL_COOPERATIVE,
            "forced cancel: the engine terminates the run; steps still running are not asked "
            "to stop first",
            via=CANCEL_FORCED,
        ),
        Emulation(
            CANCEL_FORCED,
            "cooperative cancel: running steps are asked to stop and the run ends when they do",
            via=CANCEL_COOPERATIVE,
        ),
        Emulation(
            WORKFLOW_FAN_DYNAMIC,
            "static fan-out: the plan's DAG is fixed before start and its parallel branches are "
            "scheduled as static forks",
            via=WORKFLOW_FAN_PARALLEL,
        ),
        Emulation(
            WORKFLOW_CHILD_WORKFLOWS,
            "inline steps: every step runs inside the run's own workflow",
        ),
        Emulation(
            WORKFLOW_CONTINUE_AS_NEW,
            "no engine-side compaction: progress lives in the state store and the engine keeps "
            "per-task history only",
            via=QUERY_TASK_STATE,
        ),
        Emulation(
            QUERY_WORKFLOW_STATE,
            "state from the store: the run's snapshot and the engine's task states answer status",
            via=QUERY_TASK_STATE,
        ),
        Emulation(
            QUERY_TASK_STATE,
            "state from the workflow query and the store's step snapshots",
            via=QUERY_WORKFLOW_STATE,
        ),
        Emulation(
            REPLAY_FULL,
            "replay from the event log: the run's snapshot is rebuilt by the projector, the "
            "engine replays per task",
            via=REPLAY_TASK,
        ),
        Emulation(
            REPLAY_TASK,
            "full replay covers per-task replay",
            via=REPLAY_FULL,
        ),
        Emulation(
            SIGNALS_RATE_LIMIT,
            "dvt's signal rules count signals per run per minute before the engine sees them",
        ),
    )
}


def engine_capabilities(engine: str) -> frozenset[str]:
    """The declared capabilities of a known engine (empty for an unknown name)."""
    return ENGINE_CAPABILITIES.get(engine, frozenset())


def emulation_for(capability: str, capabilities: frozenset[str]) -> Emulation | None:
    """The documented emulation of ``capability`` usable on an engine, or None."""
    emulation = EMULATIONS.get(capability)
    if emulation is None or not emulation.available_on(capabilities):
        return None
    return emulation


# --- plan v1.3 flow features ------------------------------------------------------------------
# Not engine capabilities a plan asks for: a plan that uses one needs no fallbackBehavior, because
# the rule lives in the shared interpreter that every engine drives. What differs is who decides:
# "native" when the engine's own scheduler does, "emulated" when dvt's interpreter does it inside
# the engine's workflow (the run still behaves the same), "degraded" when part of it is lost.
FLOW_BOUNDED_CONCURRENCY = "flow.concurrency.bounded"
FLOW_PARTIAL_JOIN = "flow.join.partial"
#: ``join.losers: cancel``: running losers are skipped when the join is met and their attempt is
#: stopped. "native" when the engine interrupts the attempt (cooperative cancel), "degraded"
#: when it runs to its end and its result is discarded; the log is the same either way.
FLOW_LOSERS_CANCEL = "flow.join.losersCancel"
FLOW_CONDITIONS = "flow.conditions"
FLOW_FOR_EACH = "flow.forEach"
#: ``steps[].priority``: the ready order (priority, then plan order) wherever steps wait.
FLOW_PRIORITY = "flow.priority"
#: ``resourceClasses[c].maxParallel``: at most that many running steps of the class.
FLOW_CLASS_LIMIT = "flow.resourceClass.limit"
#: ``steps[].resourceClass`` sending a step to the workers of its class (host settings).
FLOW_CLASS_ROUTING = "flow.resourceClass.routing"
FLOW_FEATURES: tuple[str, ...] = (FLOW_BOUNDED_CONCURRENCY, FLOW_PARTIAL_JOIN, FLOW_CONDITIONS,
                                  FLOW_FOR_EACH, FLOW_PRIORITY, FLOW_CLASS_LIMIT,
                                  FLOW_CLASS_ROUTING, FLOW_LOSERS_CANCEL)

FlowSupport = str  # "native" | "emulated" | "degraded"

FLOW_SUPPORT: Mapping[str, Mapping[str, FlowSupport]] = {
    # The reference engine is the interpreter's own loop. It has no worker pools: every step
    # runs in its one process, so a resource class limits and prices steps but routes nowhere.
    "reference": {**{f: "native" for f in FLOW_FEATURES}, FLOW_CLASS_ROUTING: "degraded"},
    # The workflow runs the interpreter; Temporal itself has no concurrency limit, join,
    # condition or step priority of its own, so each is decided by dvt's code inside the
    # workflow. A class's steps go to the class's task queue: Temporal routes them natively.
    # A cancelled loser's activity is cancelled: the cancel reaches it with a heartbeat's answer.
    "temporal": {**{f: "emulated" for f in FLOW_FEATURES}, FLOW_CLASS_ROUTING: "native",
                 FLOW_LOSERS_CANCEL: "native"},
    # The Conductor definition is a static chain; dvt's coordinator starts limited, joined and
    # conditional steps itself (a FORK_JOIN has no limit, quorum or CEL condition), and opens
    # gates in the ready order. A routed class's steps are tasks of their own type (as a
    # taskQueue is): Conductor's task domains are chosen per task type for a whole workflow,
    # so they cannot tell two steps of one type apart by class.
    # A cancelled loser's task is completed by the coordinator; its worker's watcher sees that
    # and stops the attempt, as it does for a run cancel.
    "conductor": {**{f: "emulated" for f in FLOW_FEATURES}, FLOW_LOSERS_CANCEL: "native"},
}


def flow_support(engine: str, features: tuple[str, ...]) -> dict[str, FlowSupport]:
    """How an engine carries out each flow feature a plan uses (emulated on unknown engines)."""
    table = FLOW_SUPPORT.get(engine, {})
    return {f: table.get(f, "emulated") for f in features}
