"""The sql kind end to end on the reference engine: a real PostgreSQL and a real DuckDB file."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
from secret_helpers import assert_no_secrets

from dvt_engine.connections import Connection, ConnectionSettings
from dvt_engine.errors import StepParamsInvalid
from dvt_engine.models.run import RunStatus
from dvt_steps.settings import SqlStepSettings
from dvt_steps.sql import SqlStepHandler

HOSTILE = "'; DROP TABLE {table}; --"
SECRET = "pw-5a4b3c2d1e-sql-secret"


def sql(connections: dict[str, Connection], **settings: Any) -> dict[str, SqlStepHandler]:
    """The sql kind over the given named connections and host settings."""
    return {"sql": SqlStepHandler(SqlStepSettings(**settings),
                                  connections=ConnectionSettings(connections=connections))}


def step(step_id: str, depends_on: tuple[str, ...] = (), **params: Any) -> dict[str, Any]:
    return {"stepId": step_id, "kind": "sql", "params": params, "dependsOn": depends_on}


@pytest.fixture
def pg(dvt_postgres_dsn: str) -> Connection:
    """The session's PostgreSQL as a named connection, its password by reference."""
    return Connection(url=dvt_postgres_dsn + "?application_name=dvt-steps-" + uuid.uuid4().hex[:8],
                      password_ref="vault:pg")


@pytest.fixture
def duck(tmp_path: Path) -> Connection:
    """A DuckDB database file."""
    return Connection(url=f"duckdb://{tmp_path / 'warehouse.db'}")


def table_name() -> str:
    return "t_" + uuid.uuid4().hex[:10]


async def test_postgres_parameters_are_bound_and_hostile_text_stays_data(
        step_client: Any, pg: Connection) -> None:
    table = table_name()
    hostile = HOSTILE.format(table=table)
    steps = [
        step("create", statement=f"create table {table} (id int, name text)"),
        step("insert", ("create",), statement=f"insert into {table} values (%s, %s), (%s, %s)",
             parameters=[1, hostile, 2, "plain"]),
        step("named", ("insert",), statement=f"select name from {table} where id = %(id)s",
             parameters={"id": 1}),
        step("count", ("named",), statement=f"select count(*) as n from {table}"),
        step("script", ("count",),
             statement=f"insert into {table} values (3, 'c'); select max(id) as m from {table}"),
    ]
    async with step_client(sql({"pg": pg}), secrets={"vault:pg": SECRET}) as c:
        ran = await c.run([{**s, "params": {**s["params"], "connection": "pg"}} for s in steps])
    assert ran.snapshot.status == RunStatus.COMPLETED, ran.snapshot
    assert ran.output("create") == {"rowsAffected": None}
    assert ran.output("insert") == {"rowsAffected": 2}
    assert ran.output("named") == {"rowCount": 1, "columns": [{"name": "name", "type": "text"}],
                                   "rows": [[hostile]]}
    assert ran.output("count")["rows"] == [[2]]
    assert ran.output("script")["rows"] == [[3]]
    async with await psycopg.AsyncConnection.connect(pg.url) as conn:
        got = await (await conn.execute(f"select name from {table} order by id")).fetchall()
    assert got == [(hostile,), ("plain",), ("c",)]


async def test_a_large_postgres_result_is_a_parquet_artifact(step_client: Any,
                                                            pg: Connection) -> None:
    statement = ("select g as id, 'row ' || g as label, g * 1.5 as half"
                 " from generate_series(1, %s) g")
    async with step_client(sql({"pg": pg}), secrets={"vault:pg": SECRET}) as c:
        ran = await c.run([step("big", connection="pg", statement=statement,
                                parameters=[5000])])
    out = ran.output("big")
    assert out["rowCount"] == 5000
    assert "rows" not in out
    assert [col["name"] for col in out["columns"]] == ["id", "label", "half"]
    assert out["rowsArtifact"]["mediaType"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(await ran.artifact(out["rowsArtifact"]["uri"])))
    assert table.num_rows == 5000
    assert table.column("id").to_pylist()[:3] == [1, 2, 3]
    assert table.column("label").to_pylist()[-1] == "row 5000"
    assert [a.kind for a in ran.snapshot.artifacts] == ["sql.result"]


async def test_secrets_in_parameters_and_the_connection_never_reach_the_log(
        step_client: Any, pg: Connection) -> None:
    steps = [
        step("echo", connection="pg", statement="select %s::text as v, 'x' as w",
             parameters=[{"secretRef": "vault:value"}]),
        step("bad", connection="pg", statement="select %s::int",
             parameters=[{"secretRef": "vault:value"}]),
        step("many", connection="pg",
             statement="select %s::text || g as v from generate_series(1, 3000) g",
             parameters=[{"secretRef": "vault:value"}]),
    ]
    value = "value-0x77-" + SECRET
    async with step_client(sql({"pg": pg}),
                           secrets={"vault:pg": SECRET, "vault:value": value}) as c:
        ran = await c.run(steps)
    assert ran.output("echo")["rows"] == [["***", "x"]]
    error = ran.error("bad")
    assert (error["code"], error["retryable"]) == ("SQL_ERROR", False)
    assert "SQLSTATE 22P02" in error["message"]
    assert "***" in error["message"]
    parquet = await ran.artifact(ran.output("many")["rowsArtifact"]["uri"])
    labels = pq.read_table(io.BytesIO(parquet)).column("v").to_pylist()
    assert labels[:2] == ["***1", "***2"]
    assert_no_secrets(ran.text(), *[b.decode("latin-1") for b in c.artifacts.objects.values()],
                      known=[SECRET, value])


async def test_a_syntax_error_is_a_coded_failure(step_client: Any, pg: Connection) -> None:
    async with step_client(sql({"pg": pg}), secrets={"vault:pg": SECRET}) as c:
        ran = await c.run([step("s", connection="pg", statement="selec 1")])
    error = ran.error("s")
    assert (error["code"], error["retryable"]) == ("SQL_ERROR", False)
    assert "SQLSTATE 42601" in error["message"]


async def backends_running(url: str, application_name: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute(
            "select count(*) from pg_stat_activity where application_name = %s"
            " and state = 'active'", [application_name])).fetchone()
    assert row is not None
    return int(row[0])


async def until_no_backend(url: str, application_name: str) -> int:
    """The server's count of the step's active backends, once it is 0 or 10 s have passed."""
    deadline = time.monotonic() + 10
    count = await backends_running(url, application_name)
    while count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        count = await backends_running(url, application_name)
    return count


async def test_cancelling_a_postgres_step_stops_the_query_on_the_server(
        step_client: Any, pg: Connection, dvt_postgres_dsn: str) -> None:
    app = pg.url.rsplit("=", 1)[1]

    async def cancel_once_the_query_runs(handle: Any) -> None:
        deadline = time.monotonic() + 30
        while not await backends_running(dvt_postgres_dsn, app):
            assert time.monotonic() < deadline, "the query never started"
            await asyncio.sleep(0.05)
        await handle.cancel("enough")

    began = time.monotonic()
    async with step_client(sql({"pg": pg}), secrets={"vault:pg": SECRET}) as c:
        ran = await c.run([step("long", connection="pg", statement="select pg_sleep(60)")],
                          on_start=cancel_once_the_query_runs)
    assert ran.snapshot.status == RunStatus.CANCELLED
    assert time.monotonic() - began < 30
    assert await until_no_backend(dvt_postgres_dsn, app) == 0


async def test_a_postgres_timeout_is_coded_and_cancels_the_query(
        step_client: Any, pg: Connection, dvt_postgres_dsn: str) -> None:
    async with step_client(sql({"pg": pg}), secrets={"vault:pg": SECRET}) as c:
        ran = await c.run([step("t", connection="pg", statement="select pg_sleep(60)",
                                timeoutS=0.5)])
    error = ran.error("t")
    assert (error["code"], error["retryable"]) == ("STEP_TIMEOUT", True)
    assert await until_no_backend(dvt_postgres_dsn, pg.url.rsplit("=", 1)[1]) == 0


async def test_duckdb_binds_parameters_and_keeps_hostile_text_as_data(
        step_client: Any, duck: Connection) -> None:
    hostile = HOSTILE.format(table="t")
    steps = [
        step("create", connection="duck", statement="create table t (id int, name varchar)"),
        step("insert", ("create",), connection="duck",
             statement="insert into t values (?, ?), (?, ?)", parameters=[1, hostile, 2, "b"]),
        step("named", ("insert",), connection="duck",
             statement="select name from t where id = $id", parameters={"id": 1}),
        step("script", ("named",), connection="duck",
             statement="create table u as select 1 as x; select count(*) as n from t"),
    ]
    async with step_client(sql({"duck": duck})) as c:
        ran = await c.run(steps)
    assert ran.snapshot.status == RunStatus.COMPLETED, ran.snapshot
    assert ran.output("insert") == {"rowsAffected": 2}
    assert ran.output("named")["rows"] == [[hostile]]
    assert ran.output("script")["rows"] == [[2]]
    import duckdb

    with duckdb.connect(str(Path(duck.url.removeprefix("duckdb://")))) as con:
        assert con.execute("select name from t order by id").fetchall() == [(hostile,), ("b",)]


async def test_a_large_duckdb_result_is_a_parquet_artifact(step_client: Any,
                                                          duck: Connection) -> None:
    async with step_client(sql({"duck": duck}, max_inline_rows=10)) as c:
        ran = await c.run([step("r", connection="duck",
                                statement="select range as n from range(?)", parameters=[11])])
    out = ran.output("r")
    assert out["rowCount"] == 11
    table = pq.read_table(io.BytesIO(await ran.artifact(out["rowsArtifact"]["uri"])))
    assert table.column("n").to_pylist() == list(range(11))


async def test_cancelling_a_duckdb_step_interrupts_the_query(step_client: Any,
                                                            duck: Connection) -> None:
    async def cancel_soon(handle: Any) -> None:
        async for event in handle.events(follow=True):
            if event.event_type == "StepStarted":
                break
        await handle.cancel("enough")

    began = time.monotonic()
    statement = "select count(*) from range(100000000000) a where a.range % 7 = 3"
    async with step_client(sql({"duck": duck})) as c:
        ran = await c.run([step("long", connection="duck", statement=statement)],
                          on_start=cancel_soon)
    assert ran.snapshot.status == RunStatus.CANCELLED
    assert time.monotonic() - began < 20


async def test_files_are_read_only_under_the_allowed_roots(step_client: Any, duck: Connection,
                                                          tmp_path: Path) -> None:
    root = tmp_path / "sql"
    root.mkdir()
    (root / "q.sql").write_text("select 41 + 1 as answer")
    (tmp_path / "outside.sql").write_text("select 1")
    (root / "link.sql").symlink_to(tmp_path / "outside.sql")
    steps = [
        step("ok", connection="duck", file="q.sql"),
        step("abs", connection="duck", file=str(root / "q.sql")),
        step("up", connection="duck", file="../outside.sql"),
        step("out", connection="duck", file=str(tmp_path / "outside.sql")),
        step("link", connection="duck", file="link.sql"),
        step("missing", connection="duck", file="nope.sql"),
    ]
    async with step_client(sql({"duck": duck}, file_roots=(str(root),))) as c:
        ran = await c.run(steps)
    async with step_client(sql({"duck": duck})) as c:
        unset = await c.run([step("none", connection="duck", file="q.sql")])
    assert ran.output("ok")["rows"] == [[42]]
    assert ran.output("abs")["rows"] == [[42]]
    for refused in ("up", "out", "link"):
        assert ran.error(refused)["code"] == "SQL_FILE_NOT_ALLOWED", refused
    assert ran.error("missing")["code"] == "STEP_PARAMS_INVALID"
    assert unset.error("none")["code"] == "SQL_FILE_NOT_ALLOWED"


@pytest.mark.parametrize(("params", "code"), [
    ({"connection": "duck", "statement": "select 1", "file": "q.sql"}, "STEP_PARAMS_INVALID"),
    ({"connection": "duck"}, "STEP_PARAMS_INVALID"),
    ({"connection": "duck", "statement": "select ?", "parameters": [{"a": 1}]},
     "STEP_PARAMS_INVALID"),
    ({"connection": "nowhere", "statement": "select 1"}, "CONNECTION_NOT_FOUND"),
    ({"connection": "hosted", "statement": "select 1"}, "SQL_ERROR"),
    ({"connection": "mysql", "statement": "select 1"}, "SQL_ERROR"),
])
async def test_bad_params_are_coded(step_client: Any, duck: Connection, params: dict[str, Any],
                                    code: str) -> None:
    odd = {"hosted": Connection(url="duckdb://warehouse.db"),
           "mysql": Connection(url="mysql://db.example.com/x")}
    async with step_client(sql({"duck": duck, **odd})) as c:
        plan = [{"stepId": "b", "kind": "sql", "params": params}]
        if code == "STEP_PARAMS_INVALID":
            # The kind's params schema refuses the plan when it is validated: no run starts.
            with pytest.raises(StepParamsInvalid):
                await c.run(plan)
            return
        ran = await c.run(plan)
    error = ran.error("b")
    assert (error["code"], error["retryable"]) == (code, False)


async def test_connections_and_roots_come_from_the_environment(
        step_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVT_CONNECTIONS__LAKE__URL", f"duckdb://{tmp_path / 'lake.db'}")
    async with step_client({"sql": SqlStepHandler()}) as c:
        ran = await c.run([step("e", connection="lake", statement="select 'ok' as s")])
    assert ran.output("e")["rows"] == [["ok"]]
