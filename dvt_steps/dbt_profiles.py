"""The profiles.yml a dbt step runs with, generated from a named connection.

dbt reads its connection from a profile; dvt writes one per step attempt into a private
temporary folder, from the named connection (``DVT_CONNECTIONS__<NAME>__URL``), so plans name
a connection and never hold credentials. The password is not written: the profile reads it with
``env_var('DBT_ENV_SECRET_DVT_PASSWORD')``, and dbt masks every ``DBT_ENV_SECRET_`` value in
its logs and artifacts. The profile is JSON, which YAML reads as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from dvt_engine.connections import Connection
from dvt_engine.errors import StepFailed

__all__ = ["PASSWORD_ENV", "PROFILE_NAME", "DbtProfile", "adapter_for", "build_profile"]

PROFILE_NAME = "dvt"
PASSWORD_ENV = "DBT_ENV_SECRET_DVT_PASSWORD"
#: URL scheme -> dbt adapter type (and the module that must be importable for it).
ADAPTERS: dict[str, str] = {"postgresql": "postgres", "postgres": "postgres", "duckdb": "duckdb"}
#: Query parameters of a postgres URL passed on to dbt-postgres as profile fields.
POSTGRES_OPTIONS = ("sslmode", "sslcert", "sslkey", "sslrootcert", "connect_timeout", "role",
                    "search_path", "keepalives_idle", "retries")


@dataclass(frozen=True)
class DbtProfile:
    """A generated profile: the file's text and the environment it needs (the secret)."""

    text: str
    adapter: str
    env: dict[str, str] = field(default_factory=dict)


def adapter_for(connection: Connection) -> str:
    """The dbt adapter type for a connection's URL scheme; STEP_FAILED when dbt has none."""
    adapter = ADAPTERS.get(connection.scheme.lower())
    if adapter is None:
        raise StepFailed(
            f"dbt steps support postgresql and duckdb connections, not {connection.scheme!r}",
            details={"scheme": connection.scheme, "supported": sorted(ADAPTERS)},
            retryable=False)
    return adapter


def build_profile(connection: Connection, *, password: str | None, target: str,
                  threads: int) -> DbtProfile:
    """The profile for ``connection`` with one output named ``target``."""
    adapter = adapter_for(connection)
    parts = urlsplit(connection.url)
    query = dict(parse_qsl(parts.query))
    schema = connection.options.get("schema") or query.get("schema")
    output: dict[str, Any] = {"type": adapter, "threads": threads}
    env: dict[str, str] = {}
    if adapter == "postgres":
        output.update({
            "host": parts.hostname or "localhost",
            "port": parts.port or 5432,
            "user": unquote(parts.username or ""),
            "dbname": unquote(parts.path.lstrip("/")) or "postgres",
            "schema": schema or "public",
            "password": "",
        })
        for key in POSTGRES_OPTIONS:
            value = connection.options.get(key, query.get(key))
            if value is not None:
                output[key] = value
        if password is not None:
            output["password"] = "{{ env_var('" + PASSWORD_ENV + "') }}"
            env[PASSWORD_ENV] = password
    else:
        # duckdb:///abs/file.duckdb (or duckdb:///:memory:): the path is the database file.
        path = unquote(parts.path) or ":memory:"
        output.update({"path": path.removeprefix("/") if path == "/:memory:" else path,
                       "schema": schema or "main"})
    document = {PROFILE_NAME: {"target": target, "outputs": {target: output}}}
    return DbtProfile(text=json.dumps(document, indent=2), adapter=adapter, env=env)
