"""What a ``dbt`` step costs over running dbt yourself.

The same ``dbt run`` of the example project (examples/dbt_project, 5 models) on a DuckDB file,
three ways, interleaved round by round so drift on a shared machine hits all three alike:

- ``cli``: the ``dbt`` command in a fresh process, as a cron job or a shell step would run it;
- ``runner``: dbt-core's ``dbtRunner().invoke(...)`` inside this (warm) process, the cheapest
  possible way, with nothing isolated and nothing cancellable;
- ``step``: a one-step plan with the ``dbt`` kind on the reference engine (memory store, memory
  artifact store): profile generation, the child process, events, artifacts (raw, canonical).

Run: ``python benchmarks/bench_dbt.py [--rounds 5] [--json] [--quick]``; the seeds load first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROJECT = REPO / "examples" / "dbt_project"
QUIET_ENV = {"DO_NOT_TRACK": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
             "DBT_USE_COLORS": "false", "DBT_VERSION_CHECK": "false"}


def _profile(workdir: Path, database: Path) -> Path:
    profiles = workdir / f"profiles-{database.stem}"
    profiles.mkdir(exist_ok=True)
    (profiles / "profiles.yml").write_text(json.dumps({"bench": {"target": "dvt", "outputs": {
        "dvt": {"type": "duckdb", "path": str(database), "schema": "main", "threads": 1}}}}),
        "utf-8")
    return profiles


def _args(command: str, profiles: Path, workdir: Path, tag: str) -> list[str]:
    return [command, "--project-dir", str(PROJECT), "--profiles-dir", str(profiles),
            "--profile", "bench", "--target", "dvt", "--target-path", str(workdir / f"t-{tag}"),
            "--log-path", str(workdir / f"l-{tag}"), "--threads", "1"]


def run_cli(profiles: Path, workdir: Path, tag: str) -> float:
    """One ``dbt run`` as a fresh process; its wall time in seconds."""
    dbt = Path(sys.executable).parent / "dbt"
    began = time.perf_counter()
    subprocess.run([str(dbt), *_args("run", profiles, workdir, tag)], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, **QUIET_ENV})
    return time.perf_counter() - began


def run_runner(profiles: Path, workdir: Path, tag: str) -> float:
    """One ``dbtRunner().invoke`` in this process; its wall time in seconds."""
    from dbt.cli.main import dbtRunner

    began = time.perf_counter()
    result = dbtRunner().invoke([*_args("run", profiles, workdir, tag), "--quiet"])
    elapsed = time.perf_counter() - began
    assert result.success, result.exception
    return elapsed


async def run_step(database: Path, tag: str) -> float:
    """One plan with one ``dbt`` step on the reference engine; its wall time in seconds."""
    from dvt_engine import Client, ReferenceSettings
    from dvt_engine.connections import ConnectionSettings
    from dvt_engine.plugins import open_engine
    from dvt_engine.steps.registry import builtin_registry
    from dvt_engine.stores.memory import MemoryRunStateStore
    from dvt_engine.stores.memory_artifacts import MemoryArtifactStore
    from dvt_steps.dbt import DbtHandler
    from dvt_steps.tool_roots import ToolRootsSettings

    registry = builtin_registry()
    registry.register("dbt", DbtHandler(
        connections=ConnectionSettings(connections={"w": {"url": f"duckdb:///{database}"}}),
        roots=ToolRootsSettings(allowed_roots=(str(REPO / "examples"),))))
    store = MemoryRunStateStore()
    engine = open_engine(ReferenceSettings(), store=store, registry=registry,
                         artifacts=MemoryArtifactStore())
    plan = {"metadata": {"planId": "bench-dbt", "planVersion": "1", "schemaVersion": "v1.2"},
            "steps": [{"stepId": "run", "kind": "dbt", "params": {
                "command": "run", "project": str(PROJECT), "connection": "w"}}]}
    async with Client(engine=engine, store=store, tenant="bench") as client:
        began = time.perf_counter()
        snapshot = await (await client.start_run(plan, run_id=f"bench-{tag}")).result()
        elapsed = time.perf_counter() - began
    assert snapshot.status == "COMPLETED", snapshot.steps[0].error
    return elapsed


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (less noisy than wall time
    on a busy machine)."""
    me, children = (resource.getrusage(resource.RUSAGE_SELF),
                    resource.getrusage(resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    """Measure the three ways and print the medians and the step's overhead."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="two rounds, a smoke run")
    options = parser.parse_args()
    if options.quick:
        options.rounds = 2
    os.environ.update(QUIET_ENV)
    with tempfile.TemporaryDirectory(prefix="dvt-bench-dbt-") as tmp:
        workdir = Path(tmp)
        # One database file each: dbtRunner keeps its DuckDB connection open in this process,
        # and DuckDB lets one process at a time hold a file.
        databases = {name: workdir / f"{name}.duckdb" for name in ("cli", "runner", "step")}
        profiles = {name: _profile(workdir, path) for name, path in databases.items()}
        for name in databases:
            subprocess.run([str(Path(sys.executable).parent / "dbt"),
                            *_args("seed", profiles[name], workdir, f"seed-{name}")],
                           check=True, stdout=subprocess.DEVNULL)
        times: dict[str, list[float]] = {"cli": [], "runner": [], "step": []}
        cpu: dict[str, list[float]] = {"cli": [], "runner": [], "step": []}
        for index in range(options.rounds):
            for name in ("cli", "runner", "step"):
                tag = f"{name}{index}"
                before = _cpu()
                if name == "cli":
                    elapsed = run_cli(profiles[name], workdir, tag)
                elif name == "runner":
                    elapsed = run_runner(profiles[name], workdir, tag)
                else:
                    elapsed = asyncio.run(run_step(databases[name], tag))
                times[name].append(elapsed)
                cpu[name].append(_cpu() - before)
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    report: dict[str, Any] = {
        "rounds": options.rounds,
        "medianS": {k: round(v, 3) for k, v in medians.items()},
        "medianCpuS": {k: round(v, 3) for k, v in cpu_medians.items()},
        "stepOverCliPct": round(100 * (medians["step"] / medians["cli"] - 1), 1),
        "stepOverCliCpuPct": round(100 * (cpu_medians["step"] / cpu_medians["cli"] - 1), 1),
        "stepOverRunnerPct": round(100 * (medians["step"] / medians["runner"] - 1), 1),
        "samplesS": {k: [round(v, 3) for v in values] for k, values in times.items()},
    }
    if options.json:
        print(json.dumps(report, indent=2))
        return
    print(f"dbt run of examples/dbt_project on DuckDB, median of {options.rounds} rounds")
    for name in ("cli", "runner", "step"):
        print(f"  {name:<7} {medians[name]:6.2f} s wall {cpu_medians[name]:6.2f} s CPU")
    print(f"  step over cli:    {report['stepOverCliPct']:+.1f} % wall, "
          f"{report['stepOverCliCpuPct']:+.1f} % CPU")
    print(f"  step over runner: {report['stepOverRunnerPct']:+.1f} %")


if __name__ == "__main__":
    main()
