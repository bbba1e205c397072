"""The planted-secrets scan: credentials of every common shape are planted in a plan's params, a
step's output, a step's error, operator signal reasons and comments, across one full run on a
real PostgreSQL; then everything the run left behind is scanned with the shared rule table and
for the planted strings themselves: the events and snapshot, every row of every table of the
store, the Parquet archive and its manifests, the compliance export, the CLI's output and the
logs. One hit anywhere fails the test, naming where, never what."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
from archive_helpers import drain_outbox, hot_counts
from psycopg import sql
from secret_helpers import secret_findings

from dvt_archive.archiver import archive_runs
from dvt_engine import Client, HandlerRegistry, PlanBuilder, ReferenceSettings
from dvt_engine.errors import PlanSecretLiteral, StepFailed
from dvt_engine.models.run import RunStatus, StepSubstatus
from dvt_engine.models.signals import Actor, Role
from dvt_engine.plugins import open_engine
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_engine.secret_scan import REDACTED
from dvt_engine.steps import builtin_registry
from dvt_engine.waiting import wait_for_snapshot
from dvt_statestore_pg.store import PostgresRunStateStore

TENANT = "leaky"
AWAITING = StepSubstatus.AWAITING_APPROVAL
AWS_KEY = "AKIAPLANTEDX7Q3Z9K2M"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPLANTED12a"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnbmF0dXJlLXBsYW50ZWQ"
BEARER = "plantedBearerToken1234567"
URL_PASSWORD = "Pl4nted-Pa55word"
DSN = f"postgresql://app:{URL_PASSWORD}@db.internal:5432/warehouse"
PEM_BODY = "MIIEplantedKEYbody0123456789abcdefXYZ"
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"
API_KEY = "planted-api-key-value-9876"
GITHUB = "ghp_" + "PlantedGitHubToken0123456789abcdefghij"
PASSWORD = "hunter2-planted-pw"
# What must never appear anywhere, whatever rule would or would not have matched it.
PLANTED = (AWS_KEY, AWS_SECRET, JWT, BEARER, URL_PASSWORD, PEM_BODY, API_KEY, GITHUB, PASSWORD)


class LeakyOutput(StepHandler):
    """Returns an output full of credentials, as careless step code would."""

    kind = "leaky-output"

    async def run(self, ctx: StepContext) -> StepResult:
        """Output every planted credential, in values and under credential-named keys."""
        return StepResult(output={
            "note": f"used key {AWS_KEY} with secret {AWS_SECRET}",
            "auth": f"Authorization: Bearer {BEARER}",
            "dsn": DSN, "pem": PEM, "apiKey": API_KEY, "session": JWT,
            "nested": [{"password": PASSWORD}, {"token": GITHUB}],
        })


class LeakyFailure(StepHandler):
    """Fails with credentials in its message and its details."""

    kind = "leaky-failure"

    async def run(self, ctx: StepContext) -> StepResult:
        """Fail, quoting a connection string and a bearer token."""
        raise StepFailed(f"login to {DSN} failed with Bearer {BEARER}",
                         details={"aws": AWS_KEY, "password": PASSWORD, "jwt": JWT},
                         retryable=False)


@pytest.fixture
async def leaky_run(pg_store_url: str, caplog: pytest.LogCaptureFixture) -> str:
    """One full run with secrets planted at every entry point; its run id."""
    caplog.set_level(logging.DEBUG)
    store = await PostgresRunStateStore.open(pg_store_url)
    registry: HandlerRegistry = builtin_registry()
    registry.register(LeakyOutput.kind, LeakyOutput())
    registry.register(LeakyFailure.kind, LeakyFailure())
    engine = open_engine(ReferenceSettings(), store=store, registry=registry)
    client = Client(engine=engine, store=store, tenant=TENANT, owns_store=True,
                    actor=Actor(id="ops", roles=(Role.ADMIN, Role.APPROVER)))
    try:
        # A credential in params is refused before anything is stored, and not echoed.
        with pytest.raises(PlanSecretLiteral) as refused:
            await client.start_run(PlanBuilder("bad", "1").step(
                "x", "noop", params={"password": PASSWORD, "url": DSN}).build(), run_id="bad")
        assert secret_findings(str(refused.value), PLANTED) == []
        assert secret_findings(refused.value.details, PLANTED) == []
        plan = (PlanBuilder("leaky", "1")
                .step("emit", "leaky-output")
                .approval("gate", depends_on=["emit"])
                .step("boom", "leaky-failure", depends_on=["gate"])
                .build())
        handle = await client.start_run(plan, run_id="leaky-run")
        await wait_for_snapshot(store, TENANT, handle.run_id,
                                lambda s: s.step("gate").substatus == AWAITING)
        await handle.pause(reason=f"pausing, token Bearer {BEARER}")
        await handle.resume()
        # A refused signal's record keeps its reason too: it is scanned like the rest.
        await handle.skip_step("emit", reason=f"creds {AWS_KEY} {AWS_SECRET}")
        await handle.approve("gate", comment=f"ok with {JWT} and {DSN}")
        done = await handle.result(timeout=60)
        assert done.status == RunStatus.FAILED
        # The planted values really went through: the log holds their redacted shapes.
        emitted = done.step("emit").output
        assert emitted["apiKey"] == REDACTED
        assert emitted["nested"][0]["password"] == REDACTED
        assert REDACTED in emitted["note"]
        assert REDACTED in emitted["dsn"]
        await drain_outbox(store)
    finally:
        await client.close()
    return handle.run_id


def _scan(where: str, value: Any) -> list[str]:
    return [f"{where}: {hit}" for hit in secret_findings(value, PLANTED)]


def _store_rows(dsn: str, schema: str) -> Iterator[tuple[str, str]]:
    """(table, row as JSON text) for every row of every table of the store's schema."""
    with psycopg.connect(dsn) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = %s AND table_type = 'BASE TABLE'", (schema,))]
        for table in tables:
            query = sql.SQL("SELECT row_to_json(t)::text FROM {}.{} AS t").format(
                sql.Identifier(schema), sql.Identifier(table))
            for (row,) in conn.execute(query):
                yield table, row


def _cli(*args: str, store_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVT_")}
    env.update(DVT_STORE_URL=store_url, DVT_TENANT=TENANT, DVT_HOME=str(home), DVT_DEBUG="1",
               DVT_NO_LIVE="1")
    return subprocess.run([sys.executable, "-m", "dvt_cli", *args], env=env, text=True,
                          capture_output=True, check=False, timeout=300)


async def test_no_planted_secret_reaches_anything_the_run_wrote(
    leaky_run: str, pg_store_url: str, pg_dsn: str, pg_schema: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hits: list[str] = []
    store = await PostgresRunStateStore.open(pg_store_url)
    try:
        events = await store.fetch_events(TENANT, leaky_run)
        snapshot = await store.get_snapshot(TENANT, leaky_run)
        assert snapshot is not None
        assert len(events) > 10
        event_types = {e.event_type for e in events}
        assert {"RunPaused", "RunResumed", "StepFailed", "SignalRejected"} <= event_types, \
            event_types
        hits += _scan("events", [e.model_dump(mode="json") for e in events])
        hits += _scan("snapshot", snapshot.model_dump(mode="json"))
        tables: set[str] = set()
        for table, row in _store_rows(pg_dsn, pg_schema):
            tables.add(table)
            hits += _scan(f"table {table}", row)
        assert {"dvt_events", "dvt_runs"} <= tables

        # The cold tier: archive the run, then read every Parquet file and manifest back.
        cold = tmp_path / "cold"
        report = await archive_runs(pg_store_url, cold.as_uri(), older_than=timedelta(0),
                                    tenant_id=TENANT)
        assert report.runs == 1
        assert hot_counts(pg_dsn, pg_schema, [(TENANT, leaky_run)]) == {(TENANT, leaky_run): 0}
        parquet = sorted(cold.rglob("*.parquet"))
        assert parquet, "the archiver wrote no Parquet file"
        for path in parquet:
            hits += _scan(f"parquet {path.name}", pq.read_table(path).to_pylist())
        for path in cold.rglob("*.json"):
            hits += _scan(f"cold {path.name}", path.read_text())
    finally:
        await store.close()

    # What an operator sees: the CLI reading hot and cold, and the compliance export.
    home = tmp_path / "home"
    shown = [_cli("events", leaky_run, "--json", store_url=pg_store_url, home=home),
             _cli("status", leaky_run, store_url=pg_store_url, home=home),
             _cli("runs", "--json", store_url=pg_store_url, home=home)]
    today = datetime.now(UTC).date()
    export = tmp_path / "export"
    shown.append(_cli("audit", "export", "--from", (today - timedelta(days=1)).isoformat(),
                      "--to", (today + timedelta(days=1)).isoformat(), "--out", str(export),
                      store_url=pg_store_url, home=home))
    for done in shown:
        assert done.returncode == 0, done.stderr
        hits += _scan(f"cli {done.args[3:5]} stdout", done.stdout)
        hits += _scan(f"cli {done.args[3:5]} stderr", done.stderr)
    assert len(shown[0].stdout.splitlines()) == len(events)
    exported = list(export.rglob("*.jsonl"))
    assert exported
    assert sum(len(p.read_text().splitlines()) for p in exported) >= len(events)
    for path in export.rglob("*"):
        if path.is_file():
            hits += _scan(f"export {path.name}", path.read_text())

    # Logs of the process that ran it: messages and every structured field.
    assert caplog.records, "nothing was logged"
    for record in caplog.records:
        fields = {k: v for k, v in vars(record).items() if k not in ("args", "exc_info")}
        hits += _scan(f"log {record.name}", json.dumps(fields, default=str))
        hits += _scan(f"log {record.name}", record.getMessage())
    assert hits == []
