"""Plan size: validation time and run time/peak memory as plans grow, next to bare baselines.

Run: ``python benchmarks/bench_plan.py`` (``--quick`` for a smoke run with small sizes).

Validation (in process, median of repeats): dvt's full report (``build_validation_report`` on
the plan's bytes: decoding, JSON Schema, identifiers, DAG rules, secret literals, the model,
capabilities) next to a bare baseline: ``json.loads``, a prebuilt ``jsonschema`` Draft 2020-12
validator of dvt's plan schema, and a bare Kahn topological sort.

Running (one fresh subprocess per size, so peak RSS is that run's): a chain-like plan of noop
steps (each step depends on the 3 before it) on the reference engine with the memory store,
start to result, next to a bare baseline: an asyncio loop running the same DAG with a dict of
indegrees, one task per step, no events. Peak RSS is the child's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

FAN_IN = 3
VALIDATION_SIZES = (100, 1_000, 10_000)
RUN_SIZES = (1_000, 2_000, 5_000, 10_000)


def chain_document(n: int) -> dict[str, Any]:
    """A plan of ``n`` noop steps, each depending on the (up to) 3 before it."""
    steps = []
    for i in range(n):
        step: dict[str, Any] = {"stepId": f"s{i}", "kind": "noop"}
        if i:
            step["dependsOn"] = [f"s{j}" for j in range(max(0, i - FAN_IN), i)]
        steps.append(step)
    return {"metadata": {"planId": "bench-chain", "planVersion": "1",
                         "schemaVersion": "v1.2"}, "steps": steps}


def kahn_order(depends_on: dict[str, list[str]]) -> list[str]:
    """A bare Kahn topological sort (the baseline's DAG check)."""
    indegree = {s: len(d) for s, d in depends_on.items()}
    dependents: dict[str, list[str]] = {s: [] for s in depends_on}
    for step, deps in depends_on.items():
        for dep in deps:
            dependents[dep].append(step)
    ready = [s for s, n in indegree.items() if n == 0]
    order = []
    while ready:
        step = ready.pop()
        order.append(step)
        for child in dependents[step]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if len(order) != len(depends_on):
        raise ValueError("cycle")
    return order


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` in ms (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def validation_rows(sizes: tuple[int, ...], repeats: int) -> list[tuple[int, float, float]]:
    """(steps, dvt ms, baseline ms) per size."""
    from jsonschema import Draft202012Validator

    from dvt_engine.planning import build_validation_report, engine_capabilities
    from dvt_engine.schemas import load_schema

    validator = Draft202012Validator(load_schema("ExecutionPlan"))
    caps = engine_capabilities("reference")
    rows = []
    for n in sizes:
        data = json.dumps(chain_document(n)).encode()

        def dvt(data: bytes = data) -> None:
            report = build_validation_report(data, engine="reference", capabilities=caps,
                                             known_kinds=["noop"])
            assert report.ok, report.issues

        def bare(data: bytes = data) -> None:
            doc = json.loads(data)
            assert not list(validator.iter_errors(doc))
            kahn_order({s["stepId"]: s.get("dependsOn", []) for s in doc["steps"]})

        rows.append((n, median_ms(dvt, repeats), median_ms(bare, repeats)))
    return rows


# --- running (each in a child process) -------------------------------------------------------


async def dvt_run(n: int) -> float:
    """Seconds for the chain plan on the reference engine and memory store, start to result."""
    from dvt_engine import Client, ReferenceSettings
    from dvt_engine.models.plan import ExecutionPlan
    from dvt_engine.plugins import open_engine
    from dvt_engine.steps import builtin_registry
    from dvt_engine.stores.memory import MemoryRunStateStore
    from dvt_engine.stores.memory_artifacts import MemoryArtifactStore

    store = MemoryRunStateStore()
    engine = open_engine(ReferenceSettings(), store=store, registry=builtin_registry(),
                         artifacts=MemoryArtifactStore())
    plan = ExecutionPlan.model_validate(chain_document(n))
    async with Client(engine=engine, store=store, tenant="bench", owns_store=True) as client:
        began = time.perf_counter()
        handle = await client.start_run(plan, run_id=f"b-{uuid.uuid4().hex[:8]}")
        snapshot = await handle.result(timeout=3600)
        took = time.perf_counter() - began
    assert snapshot.status == "COMPLETED", snapshot.status
    return took


async def bare_run(n: int) -> float:
    """Seconds for the same DAG in a bare asyncio loop: a dict of indegrees, no events."""
    doc = chain_document(n)
    depends_on = {s["stepId"]: s.get("dependsOn", []) for s in doc["steps"]}
    began = time.perf_counter()
    indegree = {s: len(d) for s, d in depends_on.items()}
    dependents: dict[str, list[str]] = {s: [] for s in depends_on}
    for step, deps in depends_on.items():
        for dep in deps:
            dependents[dep].append(step)
    done: asyncio.Queue[str] = asyncio.Queue()

    async def noop(step: str) -> None:
        await asyncio.sleep(0)
        done.put_nowait(step)

    tasks = {s: asyncio.create_task(noop(s)) for s, k in indegree.items() if k == 0}
    finished = 0
    while finished < n:
        step = await done.get()
        finished += 1
        for child in dependents[step]:
            indegree[child] -= 1
            if indegree[child] == 0:
                tasks[child] = asyncio.create_task(noop(child))
    await asyncio.gather(*tasks.values())
    return time.perf_counter() - began


def child(which: str, n: int) -> None:
    """Run one measurement and print it as JSON (seconds, peak RSS in MB)."""
    seconds = asyncio.run(dvt_run(n) if which == "dvt" else bare_run(n))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024}))


def measure_child(which: str, n: int) -> dict[str, float]:
    """One child process's measurement."""
    out = subprocess.run([sys.executable, __file__, "--child", which, str(n)],
                         check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def render(validation: list[tuple[int, float, float]], runs: list[tuple[int, dict[str, float],
           dict[str, float]]]) -> str:
    """The markdown tables docs/benchmarks.md records."""
    load = os.getloadavg()
    lines = [f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
             f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", "",
             "| plan steps | dvt validation report (ms, median) | bare jsonschema + Kahn (ms) |",
             "|---|---|---|"]
    lines += [f"| {n} | {dvt:.1f} | {bare:.1f} |" for n, dvt, bare in validation]
    lines += ["", "| plan steps | dvt run (s) | dvt peak RSS (MB) | bare asyncio run (s) "
              "| bare peak RSS (MB) |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {d['seconds']:.2f} | {d['peak_mb']:.0f} | {b['seconds']:.2f} "
              f"| {b['peak_mb']:.0f} |" for n, d, b in runs]
    return "\n".join(lines)


def main() -> None:
    """Measure and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--child", nargs=2, metavar=("WHICH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    vsizes, rsizes, repeats = ((50, 200), (100, 200), 3) if args.quick else \
        (VALIDATION_SIZES, RUN_SIZES, 9)
    validation = validation_rows(vsizes, repeats)
    runs = [(n, measure_child("dvt", n), measure_child("bare", n)) for n in rsizes]
    print(render(validation, runs))


if __name__ == "__main__":
    main()
