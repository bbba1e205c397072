"""Plan to Conductor workflow definition: parallel branches of one FORK_JOIN, opened by gates.

The steps are split into branches of a single FORK_JOIN (see :func:`branches_of`), so the server
holds every branch at once and any DAG, not only series-parallel ones, runs with full
parallelism. A branch whose first step has dependencies starts with a gate: a SIMPLE task of a
type no worker polls, which dvt completes the moment the shared RunInterpreter says that step
may start (its dependencies are SUCCESS or SKIPPED, the run is neither paused nor ending). A
waiting gate costs the server nothing. Each step is a SIMPLE task (a HUMAN task for approval
gates) whose inline task definition carries the plan's retry policy.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from dvt_engine.models.plan import ExecutionPlan, StepSpec
from dvt_engine.rules.signals import is_gate
from dvt_engine.scheduler import steps_in_topological_order

#: Bumped whenever the shape of generated definitions changes; part of the definition digest.
MAPPING_VERSION = "3"

#: Steps looked at when checking that a step's other dependencies are ancestors of the one it
#: is chained after; past it the step simply gets a gate (always correct, only costlier).
ANCESTOR_SEARCH_LIMIT = 256

GATE_SUFFIX = "gate"
STEP_SUFFIX = "step"
APPROVAL_TASK_TYPE = "HUMAN"

#: Seconds of a step task's lease (its ``responseTimeoutSeconds``). Short, so a lost worker is
#: noticed within seconds; a running step extends it every third of it, however long it runs.
DEFAULT_LEASE_S = 6


@dataclass(frozen=True)
class MappingOptions:
    """Knobs of the mapping that are not in the plan."""

    task_prefix: str = "dvt"
    owner_email: str = "dvt@localhost.invalid"
    #: Seconds a worker may hold a step task without extending its lease before the server
    #: hands it to another worker (the step is then resumed idempotently).
    lease_s: int = DEFAULT_LEASE_S
    #: Extra server retries beyond the plan's, spent only when a worker vanished mid-attempt.
    crash_retries: int = 3
    #: (resource class, step queue) pairs, sorted: a routed class's steps are tasks of the
    #: queue's type, as a step's own taskQueue is (plan v1.3).
    class_queues: tuple[tuple[str, str], ...] = ()

    def gate_type(self) -> str:
        """Task type of gates: SIMPLE tasks no worker polls; dvt completes them directly."""
        return f"{self.task_prefix}_{GATE_SUFFIX}"

    def step_type(self, queue: str | None = None) -> str:
        """Task type of a step (a separate type per routed task queue)."""
        base = f"{self.task_prefix}_{STEP_SUFFIX}"
        return base if not queue else f"{base}_{sanitize(queue, 60)}"

    def step_queue(self, step: StepSpec) -> str | None:
        """A step's routed queue: its own taskQueue, else its resource class's (or None)."""
        if step.task_queue or not step.resource_class:
            return step.task_queue
        return dict(self.class_queues).get(step.resource_class)


def sanitize(text: str, limit: int) -> str:
    """A name Conductor (OSS and Orkes) accepts: letters, digits, ``_`` and ``-``."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", text)
    return cleaned[:limit] or "x"


def workflow_name(plan_id: str, prefix: str = "dvt") -> str:
    """The Conductor workflow name of every version of a plan."""
    digest = hashlib.sha256(plan_id.encode("utf-8")).hexdigest()[:8]
    return f"{prefix}_{sanitize(plan_id, 80)}_{digest}"


def gate_ref(index: int) -> str:
    """Reference name of the gate of the step at plan position ``index``."""
    return f"g{index}"


def step_ref(index: int) -> str:
    """Reference name of the step at plan position ``index``."""
    return f"s{index}"


def definition_digest(plan_sha256: str, options: MappingOptions) -> str:
    """What identifies one generated definition: the plan bytes, the mapping and its knobs."""
    material = "|".join([
        MAPPING_VERSION, plan_sha256, options.task_prefix, str(options.lease_s),
        str(options.crash_retries),
        # Only when set, so hosts without class routes keep their registered definitions.
        *([repr(options.class_queues)] if options.class_queues else []),
    ])
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def retry_settings(step: StepSpec, options: MappingOptions) -> dict[str, Any]:
    """The task definition's retry fields for a step's retry policy.

    Conductor's EXPONENTIAL_BACKOFF waits retryDelaySeconds x 2^(retry) before each retry: whole
    seconds, coefficient 2, no cap. The plan's initialIntervalMs is rounded to the nearest second;
    a plan asking for another coefficient or a cap gets a warning in the validation report.
    """
    retry = step.retry
    delay_s = max(0, round(retry.initial_interval_ms / 1000)) if retry else 0
    return {
        "retryCount": (step.max_attempts - 1) + options.crash_retries,
        "retryLogic": "EXPONENTIAL_BACKOFF",
        "retryDelaySeconds": delay_s,
        "backoffScaleFactor": 1,
    }


def step_task_definition(step: StepSpec, options: MappingOptions, task_type: str) -> dict[str, Any]:
    """The inline task definition of one step (retries, lease, timeout as an alert)."""
    timeout_s = 0
    if step.timeout_ms is not None:
        # The step runner enforces timeoutMs itself (StepFailed STEP_TIMEOUT); the server only
        # alerts, so that an attempt parked while awaiting an operator is never timed out.
        timeout_s = max(math.ceil(step.timeout_ms / 1000), options.lease_s + 1)
    return {
        "name": task_type,
        "ownerEmail": options.owner_email,
        **retry_settings(step, options),
        "timeoutSeconds": timeout_s,
        "timeoutPolicy": "ALERT_ONLY",
        "responseTimeoutSeconds": options.lease_s,
        "pollTimeoutSeconds": 0,
        "concurrentExecLimit": 0,
        "inputKeys": ["runId", "tenantId", "stepId"],
    }


def gate_task_definition(options: MappingOptions) -> dict[str, Any]:
    """The registered task definition of gates: never polled, never timed out."""
    return {
        "name": options.gate_type(),
        "ownerEmail": options.owner_email,
        "retryCount": 0,
        "retryLogic": "FIXED",
        "retryDelaySeconds": 0,
        "timeoutSeconds": 0,
        "timeoutPolicy": "ALERT_ONLY",
        "responseTimeoutSeconds": 3600,
        "pollTimeoutSeconds": 0,
        "description": "dvt: completed by dvt when the branch's first step may start",
    }


def registered_step_definition(options: MappingOptions, task_type: str) -> dict[str, Any]:
    """The registered (fallback) task definition of a step type; branches override it inline."""
    return {
        "name": task_type,
        "ownerEmail": options.owner_email,
        "retryCount": options.crash_retries,
        "retryLogic": "FIXED",
        "retryDelaySeconds": 0,
        "timeoutSeconds": 0,
        "timeoutPolicy": "ALERT_ONLY",
        "responseTimeoutSeconds": options.lease_s,
        "description": "dvt: runs one step through the shared step runner",
    }


def _inputs(step_id: str, index: int) -> dict[str, Any]:
    return {
        "tenantId": "${workflow.input.tenantId}",
        "runId": "${workflow.input.runId}",
        "stepId": step_id,
        "stepIndex": index,
    }


def step_task_types(plan: ExecutionPlan, options: MappingOptions) -> list[str]:
    """Every SIMPLE step task type a plan uses (the default and each routed queue)."""
    types = {options.step_type(options.step_queue(s)) for s in plan.steps if not is_gate(s)}
    return sorted(types)


def branches_of(plan: ExecutionPlan) -> list[list[int]]:
    """Fork branches as lists of plan positions; the first step of each branch has a gate.

    Steps are taken in a topological order (stable by plan order). A step is appended to the
    branch whose last step is one of its dependencies when that dependency settling is all it
    waits for: its only dependency, or the latest of several whose others are all ancestors of
    it (they settled before it could start), for a step that needs every dependency and has no
    condition. The server starts it right after that dependency, as a gate would, so no
    parallelism is lost: a chain costs one gate instead of one per step, and so does a plan
    whose steps each depend on a few steps before them. Every other step heads a branch.
    """
    return _branches(plan)[0]


def chained_after(plan: ExecutionPlan) -> dict[int, int]:
    """Plan position of each step that is not a branch's first -> the step just before it."""
    return _branches(plan)[1]


def _branches(plan: ExecutionPlan) -> tuple[list[list[int]], dict[int, int]]:
    index = {s.step_id: i for i, s in enumerate(plan.steps)}
    order = steps_in_topological_order(plan.steps)
    rank = {s.step_id: r for r, s in enumerate(order)}
    deps_of = {s.step_id: s.depends_on for s in plan.steps}
    branches: list[list[int]] = []
    after: dict[int, int] = {}
    tail_branch: dict[str, int] = {}
    for step in order:
        last = _chain_point(plan.steps[index[step.step_id]], tail_branch, rank, deps_of)
        if last is not None:
            b = tail_branch.pop(last)
            after[index[step.step_id]] = branches[b][-1]
            branches[b].append(index[step.step_id])
        else:
            b = len(branches)
            branches.append([index[step.step_id]])
        tail_branch[step.step_id] = b
    return branches, after


def _chain_point(step: StepSpec, tail_branch: dict[str, int], rank: dict[str, int],
                 deps_of: dict[str, tuple[str, ...]]) -> str | None:
    """The dependency (a branch's last step) whose settling is all ``step`` waits for."""
    deps = step.depends_on
    if len(deps) == 1:
        return deps[0] if deps[0] in tail_branch else None
    if not deps or step.when is not None or step.join is not None or step.for_each is not None:
        return None
    last = max(deps, key=rank.__getitem__)
    if last not in tail_branch:
        return None
    return last if _are_ancestors(set(deps) - {last}, last, rank, deps_of) else None


def _are_ancestors(wanted: set[str], of: str, rank: dict[str, int],
                   deps_of: dict[str, tuple[str, ...]]) -> bool:
    """Whether every step of ``wanted`` is an ancestor of ``of`` (bounded search: False when
    the answer would need more than ANCESTOR_SEARCH_LIMIT steps looked at)."""
    floor = min(rank[w] for w in wanted)
    seen: set[str] = set()
    stack = [of]
    while stack and wanted:
        for dep in deps_of[stack.pop()]:
            if dep in seen or rank[dep] < floor:
                continue  # an ancestor ranked below every wanted step leads to none of them
            seen.add(dep)
            wanted.discard(dep)
            stack.append(dep)
            if len(seen) > ANCESTOR_SEARCH_LIMIT:
                return False
    return not wanted


def gated_positions(plan: ExecutionPlan) -> set[int]:
    """Plan positions of the steps that have a gate: branch heads with dependencies.

    A branch whose first step depends on nothing needs no gate: the interpreter starts every
    such step as the run starts, and so does the server when it starts the workflow.
    """
    return {branch[0] for branch in branches_of(plan) if plan.steps[branch[0]].depends_on}


def _step_task(step: StepSpec, index: int, options: MappingOptions) -> dict[str, Any]:
    if is_gate(step):
        return {
            "name": f"{options.task_prefix}_approval",
            "taskReferenceName": step_ref(index),
            "type": APPROVAL_TASK_TYPE,
            "optional": True,
            "inputParameters": _inputs(step.step_id, index),
        }
    task_type = options.step_type(options.step_queue(step))
    return {
        "name": task_type,
        "taskReferenceName": step_ref(index),
        "type": "SIMPLE",
        # A final failure must not fail the whole workflow: under awaitOperator the other
        # branches keep running, and dvt decides the run's outcome from the log.
        "optional": True,
        "inputParameters": _inputs(step.step_id, index),
        "taskDefinition": step_task_definition(step, options, task_type),
    }


def workflow_definition(
    plan: ExecutionPlan,
    *,
    plan_sha256: str,
    version: int,
    options: MappingOptions,
) -> dict[str, Any]:
    """The Conductor workflow definition (JSON) that runs ``plan``."""
    fork_tasks: list[list[dict[str, Any]]] = []
    join_on: list[str] = []
    for branch in branches_of(plan):
        head = plan.steps[branch[0]]
        tasks: list[dict[str, Any]] = []
        if head.depends_on:
            tasks.append({
                "name": options.gate_type(),
                "taskReferenceName": gate_ref(branch[0]),
                "type": "SIMPLE",
                "inputParameters": _inputs(head.step_id, branch[0]),
            })
        tasks += [_step_task(plan.steps[i], i, options) for i in branch]
        fork_tasks.append(tasks)
        join_on.append(step_ref(branch[-1]))
    meta = plan.metadata
    digest = definition_digest(plan_sha256, options)
    return {
        "name": workflow_name(meta.plan_id, options.task_prefix),
        "version": version,
        "description": f"dvt plan {meta.plan_id} {meta.plan_version} def:{digest}",
        "schemaVersion": 2,
        "ownerEmail": options.owner_email,
        "restartable": False,
        "timeoutSeconds": 0,
        "timeoutPolicy": "ALERT_ONLY",
        "inputParameters": ["tenantId", "projectId", "environmentId", "runId"],
        "workflowStatusListenerEnabled": False,
        "tasks": [
            {"name": "fork", "taskReferenceName": "fork", "type": "FORK_JOIN",
             "forkTasks": fork_tasks},
            {"name": "join", "taskReferenceName": "join", "type": "JOIN", "joinOn": join_on},
        ],
    }


def digest_of_definition(definition: dict[str, Any]) -> str | None:
    """The definition digest recorded in a generated definition's description, if any."""
    match = re.search(r"def:([0-9a-f]{64})", str(definition.get("description") or ""))
    return match.group(1) if match else None


def mapping_warnings(plan: ExecutionPlan) -> list[tuple[str, str]]:
    """(stepId, text) where the server's retry settings cannot honour a retry policy exactly."""
    warnings: list[tuple[str, str]] = []
    for step in plan.steps:
        retry = step.retry
        if retry is None or retry.max_attempts <= 1:
            continue
        if retry.backoff_coefficient != 2.0:
            warnings.append((step.step_id,
                f"step {step.step_id}: Conductor doubles the retry delay; "
                f"backoffCoefficient {retry.backoff_coefficient} is approximated by 2"))
        if retry.initial_interval_ms % 1000:
            warnings.append((step.step_id,
                f"step {step.step_id}: Conductor retry delays are whole seconds; "
                f"initialIntervalMs {retry.initial_interval_ms} is rounded"))
        last_delay = retry.initial_interval_ms * 2 ** max(0, retry.max_attempts - 2)
        if last_delay > retry.max_interval_ms:
            warnings.append((step.step_id,
                f"step {step.step_id}: Conductor has no retry delay cap; "
                f"maxIntervalMs {retry.max_interval_ms} is not enforced"))
    return warnings
