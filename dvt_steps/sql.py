"""The ``sql`` step kind: one statement (or a parameterless script) on a named connection.

PostgreSQL (``postgresql://``, psycopg) or DuckDB (``duckdb:///path/to.db``), picked by the
connection URL's scheme. Parameters are always bound by the driver, never formatted into the
text. A small result is the output; a larger one is stored as a Parquet artifact. Cancelling the
step (or its timeoutS) cancels the query on the server (psycopg) or interrupts it (DuckDB).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import decimal
import json
import math
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from dvt_engine.connections import Connection, ConnectionSettings, resolved_url
from dvt_engine.errors import SqlError, SqlFileNotAllowed, StepParamsInvalid, StepTimeout
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_engine.secrets import redact
from dvt_steps.common import SECRET_REF_SCHEMA, Secrets, check_params, json_size, require
from dvt_steps.settings import SqlStepSettings

KIND = "sql"
EXTRA = "steps-sql"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
POSTGRES_SCHEMES = ("postgresql", "postgres")
DUCKDB_SCHEME = "duckdb"
# SQLSTATE classes worth another attempt: connection, transaction rollback (serialization,
# deadlock), insufficient resources, operator intervention (admin shutdown).
RETRYABLE_SQLSTATE_CLASSES = ("08", "40", "53", "57")
DUCKDB_DML = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE_INTO"})
DUCKDB_ROWS = frozenset({"SELECT", "EXPLAIN", "PRAGMA", "CALL", "RELATION", "EXECUTE"})

_SCALAR: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
_PARAMETER: dict[str, Any] = {"oneOf": [_SCALAR, SECRET_REF_SCHEMA,
                                        {"type": "array", "items": _SCALAR}]}
PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sql step params",
    "type": "object",
    "properties": {
        "connection": {"type": "string", "minLength": 1, "maxLength": 200},
        "statement": {"type": "string", "minLength": 1},
        "file": {"type": "string", "minLength": 1, "maxLength": 4096,
                 "pattern": "^[^\u0000]*$"},
        "parameters": {"oneOf": [
            {"type": "array", "items": _PARAMETER},
            {"type": "object", "additionalProperties": _PARAMETER},
        ]},
        "timeoutS": {"type": "number", "exclusiveMinimum": 0, "maximum": 604_800},
    },
    "required": ["connection"],
    "oneOf": [{"required": ["statement"]}, {"required": ["file"]}],
    "additionalProperties": False,
}


@dataclass
class _Result:
    """What a statement gave: its columns and rows, or the rows it changed."""

    columns: list[dict[str, str]] | None = None
    rows: list[list[Any]] | None = None
    rows_affected: int | None = None


class SqlStepHandler(StepHandler):
    """Runs ``params.statement`` (or ``params.file``) on ``params.connection``."""

    kind: ClassVar[str] = KIND
    params_schema: ClassVar[dict[str, Any]] = PARAMS_SCHEMA

    def __init__(self, settings: SqlStepSettings | None = None, *,
                 connections: ConnectionSettings | None = None) -> None:
        self.settings = settings
        self.connections = connections

    async def run(self, ctx: StepContext) -> StepResult:
        """Resolve the connection, bind the parameters, run, and record the result."""
        settings = self.settings or SqlStepSettings()
        params = ctx.params
        check_params(KIND, PARAMS_SCHEMA, params)
        connection = (self.connections or ConnectionSettings()).get(str(params["connection"]))
        text = (str(params["statement"]) if "statement" in params
                else read_sql_file(str(params["file"]), settings))
        secrets = Secrets(ctx)
        bound = await secrets.deep(params.get("parameters"))
        timeout_s = params.get("timeoutS")
        try:
            async with asyncio.timeout(timeout_s):
                result = await _execute(ctx, connection, text, bound)
        except TimeoutError:
            raise StepTimeout(f"statement ran longer than its timeoutS of {timeout_s:g} s",
                              details={"timeoutS": timeout_s}) from None
        if result.rows is None:
            return StepResult(output={"rowsAffected": result.rows_affected})
        masked = secrets.values
        output: dict[str, Any] = {"rowCount": len(result.rows), "columns": result.columns}
        if len(result.rows) <= settings.max_inline_rows:
            rows = redact([[json_value(v) for v in row] for row in result.rows], masked)
            if json_size(rows) <= settings.max_inline_bytes:
                output["rows"] = rows
                return StepResult(output=output)
        # Typed values go to Parquet as they are; only text can carry a secret to mask.
        data = _parquet(result.columns or [],
                        [[redact(v, masked) if isinstance(v, str) else v for v in row]
                         for row in result.rows])
        ref = await ctx.artifacts.put(data, kind="sql.result", media_type=PARQUET_MEDIA_TYPE)
        output["rowsArtifact"] = {"uri": ref.uri, "sizeBytes": ref.size_bytes,
                                  "mediaType": PARQUET_MEDIA_TYPE}
        return StepResult(output=output, artifacts=[ref])


def read_sql_file(name: str, settings: SqlStepSettings) -> str:
    """The text of ``name``, found under the allowed roots; SQL_FILE_NOT_ALLOWED outside them."""
    if not settings.file_roots:
        raise SqlFileNotAllowed("this worker allows no SQL files (no file roots are set)",
                                details={"file": name}, retryable=False)
    roots = [Path(r).resolve() for r in settings.file_roots]
    given = Path(name)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    inside = [c.resolve() for c in candidates
              if any(c.resolve().is_relative_to(root) for root in roots)]
    if not inside:
        # Symlinks are resolved first, so a link inside a root that points out is refused too.
        raise SqlFileNotAllowed(f"SQL file {name!r} is outside the allowed roots",
                                details={"file": name}, retryable=False)
    for path in inside:
        if path.is_file():
            if path.stat().st_size > settings.max_file_bytes:
                raise StepParamsInvalid(
                    f"SQL file {name!r} is larger than {settings.max_file_bytes} bytes",
                    details={"file": name}, retryable=False)
            return path.read_text(encoding="utf-8")
    raise StepParamsInvalid(f"SQL file {name!r} does not exist under the allowed roots",
                            details={"file": name}, retryable=False)


async def _execute(ctx: StepContext, connection: Connection, text: str, bound: Any) -> _Result:
    scheme = connection.scheme.lower()
    if scheme in POSTGRES_SCHEMES:
        return await _postgres(await resolved_url(ctx, connection), text, bound)
    if scheme == DUCKDB_SCHEME:
        return await _duckdb(duckdb_path(connection.url), text, bound)
    raise SqlError(f"connection scheme {scheme!r} is not supported (postgresql, duckdb)",
                   details={"scheme": scheme}, retryable=False)


async def _postgres(url: str, text: str, bound: Any) -> _Result:
    psycopg = require("psycopg", EXTRA)
    try:
        # On cancellation psycopg sends the server a cancel request before it re-raises.
        async with await psycopg.AsyncConnection.connect(url) as conn, conn.cursor() as cur:
            await cur.execute(text, bound if bound is not None else None)
            while cur.nextset():
                pass  # a parameterless script: its last statement's result is the result
            if cur.description is None:
                count = cur.rowcount
                return _Result(rows_affected=count if count >= 0 else None)
            types = conn.adapters.types
            columns = [{"name": c.name, "type": _pg_type(types, c.type_code)}
                       for c in cur.description]
            return _Result(columns=columns, rows=[list(r) for r in await cur.fetchall()])
    except psycopg.Error as exc:
        raise _sql_error(exc, getattr(exc, "sqlstate", None)) from None


def _pg_type(types: Any, oid: int) -> str:
    info = types.get(oid)
    return str(info.name) if info is not None else str(oid)


def duckdb_path(url: str) -> str:
    """The database path of ``duckdb:///abs/path.db`` (``duckdb:///:memory:`` for memory)."""
    parts = urlsplit(url)
    if parts.netloc:
        # duckdb://file.db would otherwise read as a host and silently open a memory database.
        raise SqlError(f"DuckDB URLs name a path, duckdb:///abs/path.db, not a host: {url!r}",
                       details={"url": url}, retryable=False)
    path = unquote(parts.path)
    if path in ("/:memory:", ":memory:", ""):
        return ":memory:"
    return path


async def _duckdb(path: str, text: str, bound: Any) -> _Result:
    duckdb = require("duckdb", EXTRA)
    try:
        con = await asyncio.to_thread(duckdb.connect, path)
    except duckdb.Error as exc:
        raise _sql_error(exc, None) from None
    stop = threading.Event()
    work = asyncio.get_running_loop().run_in_executor(None, _duckdb_run, con, text, bound, stop)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        # Until the thread is done: an interrupt sent just before the query starts is lost.
        with contextlib.suppress(BaseException):
            while not work.done():
                con.interrupt()
                await asyncio.wait({work}, timeout=0.1)
        raise
    except duckdb.Error as exc:
        raise _sql_error(exc, None) from None
    finally:
        if work.done():
            con.close()


def _duckdb_run(con: Any, text: str, bound: Any, stop: threading.Event) -> _Result:
    statements = con.extract_statements(text)
    last = statements[-1].type.name if statements else "SELECT"
    if stop.is_set():
        raise asyncio.CancelledError
    con.execute(text, bound)
    description = con.description
    if description is None:
        return _Result()
    if last in DUCKDB_DML and [d[0] for d in description] == ["Count"]:
        row = con.fetchone()
        return _Result(rows_affected=int(row[0]) if row else None)
    if last not in DUCKDB_DML and last not in DUCKDB_ROWS:
        return _Result()
    columns = [{"name": str(d[0]), "type": str(d[1])} for d in description]
    return _Result(columns=columns, rows=[list(row) for row in con.fetchall()])


def _sql_error(exc: BaseException, sqlstate: str | None) -> SqlError:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    retryable = (sqlstate is None and type(exc).__name__ == "OperationalError") or (
        sqlstate is not None and sqlstate[:2] in RETRYABLE_SQLSTATE_CLASSES)
    return SqlError(first_line + (f" (SQLSTATE {sqlstate})" if sqlstate else ""),
                    details={"sqlstate": sqlstate}, retryable=retryable)


def json_value(value: Any) -> Any:
    """A database value as JSON: exact decimals and times as text, bytes as base64."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [json_value(v) for v in value]
    return str(value)


def _parquet(columns: list[dict[str, str]], rows: list[list[Any]]) -> bytes:
    pa = require("pyarrow", EXTRA)
    pq = require("pyarrow.parquet", EXTRA)
    arrays = []
    for index in range(len(columns)):
        values = [row[index] for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            # Mixed shapes (json columns, say): keep each cell as its JSON text.
            arrays.append(pa.array([None if v is None else json.dumps(json_value(v))
                                    for v in values], type=pa.string()))
    table = pa.Table.from_arrays(arrays, names=[c["name"] for c in columns])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())
