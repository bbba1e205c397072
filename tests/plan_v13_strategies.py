"""Random bounded v1.3 plans for property tests (the reference engine's invariants, and a
parity sample on the durable engines)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dvt_engine.planning import validate_plan_document
from dvt_engine.rules.conditions import settled_before

GROUPS = ("g1", "g2")


@st.composite
def bounded_plans(draw: st.DrawFn, *, deterministic: bool = False) -> dict[str, Any]:
    """A valid random v1.3 plan whose steps all succeed.

    ``deterministic`` leaves out ``losers: skip`` and ``cancel`` on an ``any`` join: which
    losers have not started (or are still running) when the first dependency settles depends
    on step timing once they can run in parallel, so such a plan's outcome may differ between
    engines (the golden scenarios pin that case with plans whose order is fixed).
    """
    n = draw(st.integers(2, 9))
    steps: list[dict[str, Any]] = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
        step: dict[str, Any] = {"stepId": f"s{i}", "dependsOn": [f"s{d}" for d in deps]}
        if draw(st.booleans()):
            step.update(kind="echo", params={"v": draw(st.integers(0, 9))})
        else:
            step.update(kind="sleep", params={"ms": draw(st.integers(0, 15))})
        if len(deps) >= 2:
            mode = draw(st.sampled_from(["all", "any", "quorum"]))
            if mode == "quorum":
                step["join"] = {"mode": "quorum", "count": draw(st.integers(1, len(deps)))}
            elif mode == "any":
                losers = ["finish"] if deterministic else ["finish", "skip", "cancel"]
                step["join"] = {"mode": "any", "losers": draw(st.sampled_from(losers))}
        if draw(st.booleans()):
            step["concurrencyGroup"] = draw(st.sampled_from(GROUPS))
        steps.append(step)
    metadata: dict[str, Any] = {
        "planId": "prop13", "planVersion": "1", "schemaVersion": "v1.3",
        "maxParallel": draw(st.integers(1, 4)),
        "concurrencyGroups": {g: draw(st.integers(1, 2)) for g in GROUPS},
        "skipRule": draw(st.sampled_from(["satisfy", "cascade"])),
    }
    document = {"metadata": metadata, "params": {"limit": draw(st.integers(0, 9))},
                "steps": steps}
    if draw(st.booleans()):
        # A bounded fan-out over a param list; its dependants are the fan-in.
        template = draw(st.sampled_from(steps))
        template["forEach"] = {"param": "items", "maxItems": 3}
        document["params"]["items"] = draw(st.lists(st.integers(0, 9), max_size=3))
    # Conditions may read the outputs of echo steps settled before theirs.
    outline = validate_plan_document({**document, "metadata": {**metadata}})
    for step in steps:
        readable = sorted(s for s in settled_before(outline, step["stepId"])
                          if outline.step(s).kind == "echo")
        if readable and draw(st.booleans()):
            ref = draw(st.sampled_from(readable))
            op = draw(st.sampled_from(["<", ">=", "=="]))
            step["when"] = f"steps.{ref}.output.v {op} params.limit"
        elif draw(st.integers(0, 4)) == 0:
            step["when"] = draw(st.sampled_from(["params.limit > 4", "params.limit <= 4"]))
    validate_plan_document(document)
    return document


def sample_plans(count: int) -> list[dict[str, Any]]:
    """``count`` deterministic plans drawn the same way on every run (a reproducible sample)."""
    found: list[dict[str, Any]] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(bounded_plans(deterministic=True))
    def collect(document: dict[str, Any]) -> None:
        found.append(document)

    collect()
    return found
