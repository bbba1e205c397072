"""The ``dbt`` step kind on real dbt-core: the example project through plans on the reference
engine, against a real PostgreSQL (dbt-postgres) and DuckDB (dbt-duckdb)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import psycopg
import pytest
from process_helpers import cmdline, group_members
from secret_helpers import assert_no_secrets

from contract_tests.catalogue import EngineSide
from contract_tests.parity import run_parity
from dvt_engine import Actor, Client, ReferenceSettings, Role
from dvt_engine.connections import Connection, ConnectionSettings
from dvt_engine.models.snapshot import ArtifactRef, RunSnapshot, StepSnapshot
from dvt_engine.plugins import open_engine
from dvt_engine.settings import EngineSettings
from dvt_engine.steps.registry import builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore
from dvt_steps.dbt import DbtHandler
from dvt_steps.dbt_artifacts import canonical_json, mask_bytes
from dvt_steps.dbt_profiles import PASSWORD_ENV as PASSWORD_VAR
from dvt_steps.dbt_profiles import build_profile
from dvt_steps.tool_roots import ToolRootsSettings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PLAN = REPO / "examples" / "plans" / "dbt_seed_run_test.json"
PASSWORD = "dbt-S3cret-pw-0f9a"
PASSWORD_ENV = "DVT_TEST_DBT_PASSWORD"
ROLE = "dvt_dbt_user"


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the repository root, so the plans' relative project paths and the default
    allowed root (``examples``) mean what they say."""
    monkeypatch.chdir(REPO)


@pytest.fixture
def warehouse(dvt_postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A PostgreSQL role with a password and a schema of its own; the password is in the env."""
    parts = urlsplit(dvt_postgres_dsn)
    schema = f"dbt_{os.getpid()}_{id(monkeypatch) % 100000}"
    with psycopg.connect(dvt_postgres_dsn, autocommit=True) as conn:
        verb = "ALTER" if _role_exists(conn) else "CREATE"
        conn.execute(f"{verb} ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"GRANT CREATE ON DATABASE {parts.path.lstrip('/')} TO {ROLE}")
        conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {ROLE}")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    url = f"postgresql://{ROLE}@{parts.hostname}:{parts.port}{parts.path}?schema={schema}"
    try:
        yield {"url": url, "password_ref": f"env:{PASSWORD_ENV}", "schema": schema,
               "admin": dvt_postgres_dsn}
    finally:
        with psycopg.connect(dvt_postgres_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE usename = %s", (ROLE,))
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _role_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
    return row is not None


@contextlib.asynccontextmanager
async def dbt_client(connection: dict[str, str], roots: ToolRootsSettings | None = None,
                     ) -> AsyncIterator[tuple[Client, MemoryArtifactStore]]:
    """A client on the reference engine whose registry runs ``dbt`` against ``connection``."""
    registry = builtin_registry()
    settings = ConnectionSettings(connections={"warehouse": {
        k: v for k, v in connection.items() if k in ("url", "password_ref")}})
    registry.register("dbt", DbtHandler(connections=settings, roots=roots))
    store, artifacts = MemoryRunStateStore(), MemoryArtifactStore()
    engine = open_engine(ReferenceSettings(), store=store, registry=registry, artifacts=artifacts)
    client = Client(engine=engine, store=store, tenant="t",
                    actor=Actor(id="test", roles=tuple(Role)))
    try:
        yield client, artifacts
    finally:
        await client.close()


def step(snapshot: RunSnapshot, step_id: str) -> StepSnapshot:
    """The snapshot of one step."""
    return next(s for s in snapshot.steps if s.step_id == step_id)


def plan(*steps: dict[str, Any], plan_id: str = "dbt-test") -> dict[str, Any]:
    """A plan of dbt steps, each depending on the one before."""
    listed = []
    for index, (step_id, params) in enumerate((s["stepId"], s["params"]) for s in steps):
        entry: dict[str, Any] = {"stepId": step_id, "kind": "dbt", "params": params}
        if index:
            entry["dependsOn"] = [listed[-1]["stepId"]]
        listed.append(entry)
    return {"metadata": {"planId": plan_id, "planVersion": "1", "schemaVersion": "v1.2"},
            "steps": listed}


def refs(snap: StepSnapshot) -> dict[str, ArtifactRef]:
    """A step's artifact refs by kind."""
    return {ref.kind: ref for ref in snap.artifacts}


async def check_example_run(client: Client, artifacts: MemoryArtifactStore,
                            run_id: str) -> RunSnapshot:
    """Run the example plan; every step completes with counts and readable artifacts."""
    snapshot = await (await client.start_run(EXAMPLE_PLAN, run_id=run_id)).result(timeout=300)
    assert snapshot.status == "COMPLETED", [s.error for s in snapshot.steps]
    expected = {"seed": 3, "run": 5, "test": 11}
    for step_id, nodes in expected.items():
        snap = step(snapshot, step_id)
        assert snap.output["passed"] == nodes == snap.output["total"]
        assert snap.output["failed"] == snap.output["errored"] == 0
        by_kind = refs(snap)
        assert set(by_kind) == {"dbt.run_results", "dbt.run_results.canonical", "dbt.manifest",
                                "dbt.manifest.canonical", "dbt.log"}
        raw = json.loads(await artifacts.get(by_kind["dbt.run_results"]))
        assert raw["args"]["which"] == step_id
        assert {r["status"] for r in raw["results"]} == {"pass" if step_id == "test"
                                                         else "success"}
        canonical = json.loads(await artifacts.get(by_kind["dbt.run_results.canonical"]))
        assert "invocation_id" not in canonical["metadata"]
        assert [r["unique_id"] for r in canonical["results"]] == \
            [r["unique_id"] for r in raw["results"]]
        manifest = json.loads(await artifacts.get(by_kind["dbt.manifest"]))
        assert "model.dvt_example.customer_orders" in manifest["nodes"]
        assert b"PASS=" in await artifacts.get(by_kind["dbt.log"])
    return snapshot


def test_the_profile_reads_the_password_from_the_environment_only() -> None:
    connection = Connection(url="postgresql://etl@db.internal:6543/shop?sslmode=require",
                            password_ref="env:X", options={"schema": "marts"})
    secret = 'Zq9"w\\Y'
    profile = build_profile(connection, password=secret, target="prod", threads=4)
    assert "Zq9" not in profile.text
    assert profile.env == {PASSWORD_VAR: secret}
    output = json.loads(profile.text)["dvt"]["outputs"]["prod"]
    assert output == {"type": "postgres", "threads": 4, "host": "db.internal", "port": 6543,
                      "user": "etl", "dbname": "shop", "schema": "marts", "sslmode": "require",
                      "password": "{{ env_var('" + PASSWORD_VAR + "') }}"}
    duck = build_profile(Connection(url="duckdb:///data/w.duckdb"), password=None,
                         target="dvt", threads=1)
    assert json.loads(duck.text)["dvt"]["outputs"]["dvt"]["path"] == "/data/w.duckdb"
    # Canonical forms: volatile fields gone, the attempt folder replaced, secrets masked.
    raw = json.dumps({"metadata": {"invocation_id": "u1", "generated_at": "t"},
                      "results": [{"unique_id": "model.p.m", "timing": [1], "status": "success",
                                   "path": "/tmp/dvt-dbt-x/target/m.sql"}]}).encode()
    assert json.loads(canonical_json(raw, "/tmp/dvt-dbt-x")) == {
        "metadata": {}, "results": [{"path": "$DVT_DBT_DIR/target/m.sql",
                                     "status": "success", "unique_id": "model.p.m"}]}
    assert mask_bytes(json.dumps({"p": secret}).encode(), [secret]) == b'{"p": "***"}'


async def test_example_plan_on_postgres_keeps_the_password_out_of_everything(
        in_repo: None, warehouse: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with dbt_client(warehouse) as (client, artifacts):
        snapshot = await check_example_run(client, artifacts, "pg-1")
        events = await client.store.fetch_events("t", "pg-1")
    with psycopg.connect(warehouse["admin"]) as conn:
        row = conn.execute(f"SELECT count(*), sum(order_count) FROM {warehouse['schema']}"
                           ".customer_orders").fetchone()
    assert row == (5, 8)
    stored = [body.decode("utf-8") for body in artifacts.objects.values()]
    assert stored
    assert caplog.records  # the worker's own log, at debug level, was captured
    assert_no_secrets(snapshot, [e.model_dump(mode="json") for e in events], *stored,
                      caplog.text, known=[PASSWORD])


async def test_example_plan_on_duckdb_then_a_failing_test_retried(
        in_repo: None, tmp_path: Path) -> None:
    connection = {"url": f"duckdb:///{tmp_path / 'shop.duckdb'}"}
    async with dbt_client(connection) as (client, artifacts):
        await check_example_run(client, artifacts, "duck-1")
        failing = plan(
            {"stepId": "run", "params": {"command": "run", "project": "examples/dbt_project",
                                         "connection": "warehouse", "fullRefresh": True}},
            {"stepId": "test", "params": {"command": "test", "project": "examples/dbt_project",
                                          "connection": "warehouse",
                                          "vars": {"min_orders": 2}}})
        first = await (await client.start_run(failing, run_id="duck-2")).result(timeout=300)
        decision = await client.get_run("duck-2").retry_run(new_run_id="duck-3")
        assert decision.accepted, decision
        second = await client.get_run("duck-3").result(timeout=300)
    for snapshot in (first, second):
        assert snapshot.status == "FAILED"
        error = step(snapshot, "test").error
        assert error is not None
        assert error.code == "DBT_NODES_FAILED"
        assert "failed nodes: test.dvt_example.customers_have_min_orders" in error.message
        assert "1 failed" in error.message
        uri = error.message.split("run results: ")[1].split(";")[0]
        results = json.loads(artifacts.objects[uri.rsplit("/", 1)[1]])
        assert [r["unique_id"] for r in results["results"] if r["status"] == "fail"] == [
            "test.dvt_example.customers_have_min_orders"]
    # The same work twice: equal canonical refs, while the raw files (timestamps) differ.
    a, b = refs(step(first, "run")), refs(step(second, "run"))
    assert a["dbt.run_results.canonical"] == b["dbt.run_results.canonical"]
    assert a["dbt.manifest.canonical"] == b["dbt.manifest.canonical"]
    assert a["dbt.run_results"] != b["dbt.run_results"]
    assert step(first, "run").output == step(second, "run").output


async def test_a_project_outside_the_allowed_roots_is_refused(
        in_repo: None, tmp_path: Path) -> None:
    outside = tmp_path / "dbt_project"
    shutil.copytree(REPO / "examples" / "dbt_project", outside)
    (tmp_path / "link").symlink_to(REPO / "tests")
    connection = {"url": f"duckdb:///{tmp_path / 'x.duckdb'}"}
    async with dbt_client(connection) as (client, _):
        for index, project in enumerate([str(outside), "examples/../tests",
                                         str(tmp_path / "link")]):
            doc = plan({"stepId": "seed", "params": {"command": "seed", "project": project,
                                                     "connection": "warehouse"}})
            snapshot = await (await client.start_run(doc, run_id=f"out-{index}")).result(
                timeout=60)
            error = step(snapshot, "seed").error
            assert error is not None, project
            assert error.code == "STEP_PATH_NOT_ALLOWED", project
    assert not (tmp_path / "x.duckdb").exists()


async def test_cancelling_a_long_dbt_step_leaves_no_process(
        in_repo: None, tmp_path: Path, warehouse: dict[str, str]) -> None:
    project = tmp_path / "slow_project"
    shutil.copytree(REPO / "examples" / "dbt_project", project)
    (project / "models" / "slow.sql").write_text(
        "{{ config(materialized='table') }}\nselect 1 as waited from pg_sleep(600)\n", "utf-8")
    roots = ToolRootsSettings(allowed_roots=(str(tmp_path),))
    doc = plan({"stepId": "slow", "params": {"command": "run", "project": str(project),
                                             "connection": "warehouse", "select": "slow"}})
    async with dbt_client(warehouse, roots) as (client, _):
        run = await client.start_run(doc, run_id="cancel-1")
        child = await _sleeping_dbt(warehouse["admin"], client, "cancel-1")
        pgid = child.pid
        assert os.getpgid(pgid) == pgid  # dbt leads its own process group
        decision = await run.cancel("enough")
        assert decision.accepted
        snapshot = await run.result(timeout=60)
    assert snapshot.status == "CANCELLED"
    error = step(snapshot, "slow").error
    assert error is not None
    assert error.code == "STEP_CANCELLED"
    assert not child.is_running()
    assert group_members(pgid) == []


async def _sleeping_dbt(admin_dsn: str, client: Client, run_id: str,
                        timeout: float = 120.0) -> psutil.Process:
    """The dbt child, once its model is running in PostgreSQL (condition-based, bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    me = psutil.Process()
    while loop.time() < deadline:
        snapshot = await client.get_run(run_id).snapshot()
        assert snapshot.status in ("PENDING", "RUNNING"), [s.error for s in snapshot.steps]
        children = [p for p in me.children(recursive=True)
                    if "dvt_steps.dbt_child" in " ".join(cmdline(p))]
        async with await psycopg.AsyncConnection.connect(admin_dsn) as conn:
            cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                                     "AND query LIKE %s AND state = 'active'",
                                     (ROLE, "%pg_sleep(600)%"))
            row = await cur.fetchone()
        if children and row is not None and row[0] > 0:
            return children[0]
        await asyncio.sleep(0.2)  # polling the two conditions above, not waiting blind
    pytest.fail("dbt never reached the slow model")




@pytest.mark.parametrize("engine_name", ["temporal", "conductor"])
async def test_the_example_plan_matches_the_reference_engine(
        in_repo: None, tmp_path: Path, engine_name: str, request: pytest.FixtureRequest) -> None:
    """The dbt plan on a durable engine: the same events and outputs as on the reference one."""
    sides = []
    for label in ("reference", engine_name):
        folder = tmp_path / label
        folder.mkdir()
        registry = builtin_registry()
        registry.register("dbt", DbtHandler(connections=ConnectionSettings(connections={
            "warehouse": {"url": f"duckdb:///{folder / 'shop.duckdb'}"}})))
        store = MemoryRunStateStore()
        settings: EngineSettings = ReferenceSettings() if label == "reference" \
            else request.getfixturevalue(f"dvt_{engine_name}_settings")
        engine = open_engine(settings, store=store, registry=registry,
                             artifacts=MemoryArtifactStore())
        sides.append(EngineSide(engine, store, label))
    # Only the canonical artifacts: the raw ones differ from one invocation to the next.
    doc = json.loads(EXAMPLE_PLAN.read_text("utf-8"))
    for entry in doc["steps"]:
        entry["params"]["rawArtifacts"] = False
    try:
        report = await run_parity(doc, *sides, timeout=300)
        runs = await sides[1].store.list_runs("acme")
        snapshot = await sides[1].store.get_snapshot("acme", runs[0].run_id)
    finally:
        for side in sides:
            await side.engine.close()
    assert report.equal, report.summary()
    assert [run.status for run in runs] == ["COMPLETED"]
    assert snapshot is not None
    assert {ref.kind for ref in step(snapshot, "run").artifacts} == {
        "dbt.run_results.canonical", "dbt.manifest.canonical"}
