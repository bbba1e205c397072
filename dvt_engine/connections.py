"""Named connections: where step kinds (sql, dbt, ...) connect, without secrets in plans.

A plan names a connection (``"connection": "warehouse"``); the host defines it in settings,
with the URL free of credentials and the password as a secret reference resolved through the
step's SecretsProvider when the step runs. So a plan, an event or a log never holds a password:

    DVT_CONNECTIONS__WAREHOUSE__URL=postgresql://etl@db.internal:5432/analytics
    DVT_CONNECTIONS__WAREHOUSE__PASSWORD_REF=env:WAREHOUSE_PASSWORD
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import SettingsConfigDict

from dvt_engine.errors import ConnectionNotFound, PlanSecretLiteral
from dvt_engine.ports import StepContext
from dvt_engine.settings import _Settings

__all__ = ["Connection", "ConnectionSettings", "resolved_url"]


class Connection(BaseModel):
    """One named connection: a URL without credentials and a reference to its password."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    password_ref: str | None = Field(default=None, max_length=500)
    options: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, url: str) -> str:
        if urlsplit(url).password:
            raise PlanSecretLiteral(
                "a connection URL holds a password; give it as password_ref instead",
                details={"field": "url"})
        return url

    @property
    def scheme(self) -> str:
        """The URL scheme (postgresql, duckdb, ...), which picks the driver."""
        return urlsplit(self.url).scheme


class ConnectionSettings(_Settings):
    """The host's named connections (``DVT_CONNECTIONS__<NAME>__URL`` / ``__PASSWORD_REF``)."""

    model_config = SettingsConfigDict(env_prefix="DVT_")

    connections: dict[str, Connection] = Field(default_factory=dict)

    def get(self, name: str) -> Connection:
        """The connection called ``name`` (names are case-insensitive); ConnectionNotFound."""
        found = self.connections.get(name) or self.connections.get(name.lower())
        if found is None:
            raise ConnectionNotFound(
                f"no connection named {name!r} is configured",
                details={"connection": name, "configured": sorted(self.connections)})
        return found


async def resolved_url(ctx: StepContext, connection: Connection) -> str:
    """The connection's URL with its password filled in from the step's secrets provider.

    The result holds a secret: hand it to the driver only, never to output, events or logs.
    """
    if connection.password_ref is None:
        return connection.url
    password = await ctx.secret(connection.password_ref)
    parts = urlsplit(connection.url)
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connection_summary(connection: Connection) -> dict[str, Any]:
    """What may be shown of a connection: scheme, host and database, never credentials."""
    parts = urlsplit(connection.url)
    return {"scheme": parts.scheme, "host": parts.hostname, "database": parts.path.lstrip("/")}
