"""Dynamic fan-out (plan v1.3 ``forEach``): one child step per item of a list known at run time.

A step with ``forEach`` is a template. When it is ready (its dependencies met, a slot free, its
``when`` true) the interpreter reads the list - ``steps.<step>.output.<path>`` of an earlier
step, or the run's param ``<param>`` - and:

- refuses a value that is not a list, or a list longer than ``maxItems``: the step fails
  (StepStarted, StepFailed with ``FOREACH_ITEMS_INVALID`` / ``FOREACH_TOO_MANY_ITEMS``) before
  any child exists;
- otherwise writes StepStarted and StepExpanded (the children's ids and items) for the step and
  adds the children ``<stepId>[0]``, ``<stepId>[1]``, ... right after it in plan order. Each child
  has the template's kind, retry, timeout, task queue and concurrency group, no dependencies of
  its own (the template's are met), and the params ``{**template.params, "item": item,
  "index": i}``. A child whose item fails ``forEach.when`` is skipped at once.

The template, RUNNING, then waits for its children (it holds no concurrency slot). Once every
child has settled as SUCCESS or SKIPPED it completes with the list of the children's outputs in item
order (null for a skipped child), which its dependants - the fan-in - read like any output. A
failed child fails the run under ``failFast``; under ``awaitOperator`` it may be retried or
skipped and the template completes after it.

Pure functions only: the same list always gives the same children, events and snapshot, so
replay (StepExpanded is in the log) and every engine agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dvt_engine.errors import ErrorCode
from dvt_engine.models.plan import ExecutionPlan, ForEachSpec, StepSpec
from dvt_engine.models.snapshot import StepError

#: The log's record of an expansion (a step event, additive: older logs never contain it).
STEP_EXPANDED = "StepExpanded"


def child_id(step_id: str, index: int) -> str:
    """The id of a template's child for item ``index`` (a valid identifier: ``a[0]``)."""
    return f"{step_id}[{index}]"


def source_step(spec: StepSpec) -> str | None:
    """The step whose output a forEach reads (None for a param or no forEach)."""
    return spec.for_each.step if spec.for_each is not None else None


def _dig(value: Any, path: str | None) -> tuple[Any, str | None]:
    for key in path.split(".") if path else ():
        if not isinstance(value, Mapping) or key not in value:
            return None, f"no key {key!r} on the path {path!r}"
        value = value[key]
    return value, None


def items_of(
    spec: StepSpec, outputs: Mapping[str, Any], params: Mapping[str, Any],
) -> tuple[list[Any] | None, StepError | None]:
    """The list a template expands over, or the coded error that fails it instead."""
    each = spec.for_each
    assert each is not None
    if each.step is not None:
        value, problem = _dig(outputs.get(each.step), each.path)
        where = f"steps.{each.step}.output" + (f".{each.path}" if each.path else "")
    else:
        assert each.param is not None
        value, problem = _dig(params, f"{each.param}.{each.path}" if each.path else each.param)
        where = f"params.{each.param}" + (f".{each.path}" if each.path else "")
    if problem is None and not isinstance(value, list):
        problem = f"{where} is {type(value).__name__}, not a list"
    if problem is not None:
        return None, StepError(code=str(ErrorCode.FOREACH_ITEMS_INVALID),
                               message=f"forEach of {spec.step_id!r}: {problem}")
    assert isinstance(value, list)
    bound = each.max_items if each.max_items is not None else 0
    if len(value) > bound:
        return None, StepError(
            code=str(ErrorCode.FOREACH_TOO_MANY_ITEMS),
            message=f"forEach of {spec.step_id!r}: {where} has {len(value)} items, "
                    f"maxItems is {bound}")
    return value, None


def child_spec(template: StepSpec, index: int, item: Any) -> StepSpec:
    """The child step of a template for one item."""
    return template.model_copy(update={
        "step_id": child_id(template.step_id, index),
        "depends_on": (),
        "params": {**template.params, "item": item, "index": index},
        "join": None,
        "when": None,
        "for_each": None,
        "description": None,
    })


def expand(plan: ExecutionPlan, step_id: str, items: Sequence[Any]) -> ExecutionPlan:
    """The plan with a template's children inserted right after it, in item order."""
    steps: list[StepSpec] = []
    for spec in plan.steps:
        steps.append(spec)
        if spec.step_id == step_id:
            steps.extend(child_spec(spec, i, item) for i, item in enumerate(items))
    return plan.model_copy(update={"steps": tuple(steps)})


def is_expanded(plan: ExecutionPlan, step_id: str, items: Sequence[Any]) -> bool:
    """True when ``plan`` already holds the children of ``step_id`` (an expanded plan)."""
    return not items or child_id(step_id, 0) in set(plan.step_ids)


def item_context(context: Mapping[str, Any], index: int, item: Any) -> dict[str, Any]:
    """A per-item condition's variables: the template's, plus ``item`` and ``index``."""
    return {**context, "item": item, "index": index}


def expansion_payload(step_id: str, items: Sequence[Any]) -> dict[str, Any]:
    """StepExpanded's payload: the children's ids and their items, in item order."""
    return {"children": [child_id(step_id, i) for i in range(len(items))], "items": list(items)}


def is_template(spec: StepSpec) -> bool:
    """True for a step with ``forEach``."""
    return spec.for_each is not None


def for_each_of(spec: StepSpec) -> ForEachSpec:
    """A template's forEach (asserts the step has one)."""
    assert spec.for_each is not None
    return spec.for_each
