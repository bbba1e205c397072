"""One plan using sql, http and shell on Temporal and Conductor: the same run as the reference.

Real servers throughout: the session's Temporal dev server and Conductor jar (dvt_testing),
a DuckDB file, an HTTP server on 127.0.0.1 and real subprocesses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conductor_helpers import make_engine

from contract_tests.catalogue import as_scenario
from contract_tests.driver import make_context
from contract_tests.parity import run_parity
from contract_tests.scenarios import EngineSide
from dvt_adapters_temporal.engine import TemporalEngine
from dvt_engine.connections import Connection, ConnectionSettings
from dvt_engine.engine_base import BaseEngine
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.secrets import MappingSecretsProvider
from dvt_engine.settings import TemporalSettings
from dvt_engine.steps import HandlerRegistry, builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore
from dvt_steps.http import HttpStepHandler
from dvt_steps.settings import HttpStepSettings, ShellStepSettings
from dvt_steps.shell import ShellStepHandler
from dvt_steps.sql import SqlStepHandler

SECRET = "parity-secret-31337"


class _Answer(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = json.dumps({"got": json.loads(body),
                             "auth": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def registry(http_base: str, db: Path) -> HandlerRegistry:
    made = builtin_registry()
    made.register("sql", SqlStepHandler(connections=ConnectionSettings(
        connections={"duck": Connection(url=f"duckdb://{db}")})))
    made.register("http", HttpStepHandler(HttpStepSettings(allowed_hosts=(http_base,))))
    made.register("shell", ShellStepHandler(ShellStepSettings(commands=("sh",))))
    return made


def plan(http_base: str) -> dict[str, Any]:
    secret = {"secretRef": "vault:token"}
    steps = [
        {"stepId": "table", "kind": "sql", "params": {
            "connection": "duck",
            "statement": "create or replace table t as select * from (values (1, 'a'), (2, 'b'))"
                         " v(id, name)"}},
        {"stepId": "insert", "kind": "sql", "dependsOn": ["table"], "params": {
            "connection": "duck", "statement": "insert into t values (?, ?)",
            "parameters": [3, "'; drop table t; --"]}},
        {"stepId": "rows", "kind": "sql", "dependsOn": ["insert"], "params": {
            "connection": "duck", "statement": "select id, name from t order by id"}},
        {"stepId": "post", "kind": "http", "dependsOn": ["rows"], "params": {
            "method": "POST", "url": f"{http_base}/rows", "json": {"rows": 3},
            "headers": {"Authorization": secret}}},
        {"stepId": "shell", "kind": "shell", "dependsOn": ["post"], "params": {
            "argv": ["sh", "-c", 'echo "rows=3 token=$TOKEN"'], "env": {"TOKEN": secret}}},
        {"stepId": "fails", "kind": "shell", "dependsOn": ["shell"], "params": {
            "argv": ["sh", "-c", "echo broken >&2; exit 4"]}},
    ]
    return {"metadata": {"planId": "kinds", "planVersion": "1", "schemaVersion": "v1.2"},
            "steps": steps}


SECRETS = MappingSecretsProvider({"vault:token": SECRET})


async def compare(http_base: str, tmp_path: Path, other: BaseEngine, label: str,
                  other_store: MemoryRunStateStore) -> None:
    ref_store = MemoryRunStateStore()
    reference = ReferenceEngine(ref_store, registry=registry(http_base, tmp_path / "ref.db"),
                                secrets=SECRETS, artifacts=MemoryArtifactStore())
    sides = (EngineSide(reference, ref_store, "reference"),
             EngineSide(other, other_store, label))
    try:
        report = await run_parity(plan(http_base), *sides, timeout=120.0)
    finally:
        await reference.close()
        await other.close()
    assert report.equal, report.summary()
    assert len(set(report.checksums.values())) == 1, report.checksums
    tenant = make_context(as_scenario(plan(http_base))).tenant_id
    events = [e for side in sides for run in await side.store.list_runs(tenant)
              for e in await side.store.fetch_events(tenant, run.run_id)]
    assert len({e.run_id for e in events}) == 2
    text = json.dumps([e.model_dump(mode="json") for e in events])
    assert SECRET not in text
    completed = {e.step_id: e.payload["output"] for e in events
                 if e.event_type == "StepCompleted"}
    assert completed["rows"]["rows"][2] == [3, "'; drop table t; --"]
    assert completed["post"]["json"] == {"got": {"rows": 3}, "auth": "***"}
    failed = [e.payload["error"] for e in events if e.event_type == "StepFailed"]
    assert {f["code"] for f in failed} == {"SHELL_EXIT_NONZERO"}


async def test_temporal_runs_the_kinds_like_the_reference_engine(
        http_base: str, tmp_path: Path, dvt_temporal_settings: TemporalSettings) -> None:
    store = MemoryRunStateStore()
    engine = TemporalEngine(store=store, settings=dvt_temporal_settings,
                            registry=registry(http_base, tmp_path / "temporal.db"),
                            secrets=SECRETS, artifacts=MemoryArtifactStore())
    await compare(http_base, tmp_path, engine, "temporal", store)


async def test_conductor_runs_the_kinds_like_the_reference_engine(
        http_base: str, tmp_path: Path, dvt_conductor_url: str) -> None:
    store = MemoryRunStateStore()
    engine = make_engine(dvt_conductor_url, store,
                         registry=registry(http_base, tmp_path / "conductor.db"),
                         secrets=SECRETS, artifacts=MemoryArtifactStore())
    await compare(http_base, tmp_path, engine, "conductor", store)
