"""`dvt status RUN --dag`: the plan's steps in layers (a step comes one layer after its last
dependency), each with its state in the run, drawn as a rich tree."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from dvt_cli.output import safe
from dvt_engine.models.snapshot import RunSnapshot
from dvt_engine.planning.document import load_document

_STYLES = {"SUCCESS": "green", "RUNNING": "cyan", "FAILED": "red", "SKIPPED": "dim",
           "PENDING": "dim"}


@dataclass(frozen=True)
class DagStep:
    """One step of the drawing: id, dependencies, layer (0 = no dependency) and state."""

    step_id: str
    depends_on: tuple[str, ...]
    layer: int
    state: str


def outline_of_plan(data: bytes) -> list[tuple[str, tuple[str, ...]]]:
    """Each step's id and dependencies, read from a stored plan document."""
    doc, _ = load_document(data)
    steps = doc.get("steps") if isinstance(doc, dict) else None
    found: list[tuple[str, tuple[str, ...]]] = []
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict) and isinstance(step.get("stepId"), str):
            deps = step.get("dependsOn") or []
            found.append((step["stepId"], tuple(str(d) for d in deps)))
    return found


def layered(outline: Iterable[tuple[str, Sequence[str]]], snapshot: RunSnapshot) -> list[DagStep]:
    """The steps with their layer and their state in ``snapshot``, in layer then plan order."""
    deps = {step_id: tuple(on) for step_id, on in outline}
    states = {s.step_id: str(s.status) + (f" ({s.substatus})" if s.substatus else "")
              for s in snapshot.steps}
    layers: dict[str, int] = {}

    def layer_of(step_id: str, seen: frozenset[str] = frozenset()) -> int:
        if step_id not in layers:
            # A stored plan has no cycle; ``seen`` only keeps a damaged one from recursing.
            known = [d for d in deps.get(step_id, ()) if d in deps and d not in seen]
            layers[step_id] = 1 + max((layer_of(d, seen | {step_id}) for d in known),
                                      default=-1)
        return layers[step_id]

    order = {step_id: n for n, step_id in enumerate(deps)}
    steps = [DagStep(s, deps[s], layer_of(s), states.get(s, "PENDING")) for s in deps]
    return sorted(steps, key=lambda s: (s.layer, order[s.step_id]))


def dag_document(steps: Sequence[DagStep]) -> list[dict[str, Any]]:
    """The drawing as JSON data (``--dag --json``)."""
    return [{"stepId": s.step_id, "dependsOn": list(s.depends_on), "layer": s.layer,
             "status": s.state} for s in steps]


def draw(snapshot: RunSnapshot, steps: Sequence[DagStep], console: Console | None = None) -> None:
    """Print the run's DAG: one branch per layer, each step with its state and dependencies."""
    status = str(snapshot.status) + (f" ({snapshot.substatus})" if snapshot.substatus else "")
    tree = Tree(Text.assemble("run ", safe(snapshot.run_id), "  plan ",
                              safe(f"{snapshot.plan_id}@{snapshot.plan_version}"), "  ",
                              (status, "bold")))
    branch = None
    current = -1
    width = max([len(s.step_id) for s in steps] + [4])
    for step in steps:
        if step.layer != current or branch is None:
            current = step.layer
            branch = tree.add(Text(f"layer {current + 1}", style="bold"))
        line = Text.assemble(safe(step.step_id).ljust(width), "  ",
                             (step.state, _STYLES.get(step.state.split()[0], "")))
        if step.depends_on:
            line.append("  <- " + ", ".join(safe(d) for d in step.depends_on), style="dim")
        branch.add(line)
    (console or Console(highlight=False, soft_wrap=True)).print(tree)
