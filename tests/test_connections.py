"""Named connections: settings from the environment, no password in a URL, resolution."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from dvt_engine.connections import ConnectionSettings, resolved_url
from dvt_engine.errors import ConnectionNotFound, PlanSecretLiteral


class FakeContext:
    """Only the secret lookup of a StepContext."""

    async def secret(self, ref: str) -> str:
        """A password with characters a URL must escape."""
        assert ref == "env:PW"
        return "p@ss/w"


def test_connections_come_from_env_and_resolve_their_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVT_CONNECTIONS__WAREHOUSE__URL", "postgresql://etl@db:5432/a")
    monkeypatch.setenv("DVT_CONNECTIONS__WAREHOUSE__PASSWORD_REF", "env:PW")
    settings = ConnectionSettings()
    warehouse = settings.get("warehouse")
    assert warehouse.password_ref == "env:PW"
    assert settings.get("WAREHOUSE") == warehouse
    url = asyncio.run(resolved_url(cast(Any, FakeContext()), warehouse))
    assert url == "postgresql://etl:p%40ss%2Fw@db:5432/a"


def test_an_unknown_connection_and_a_password_in_a_url_are_refused() -> None:
    with pytest.raises(ConnectionNotFound):
        ConnectionSettings().get("nowhere")
    with pytest.raises(PlanSecretLiteral):
        ConnectionSettings(connections={"a": {"url": "postgresql://u:p@h/d"}})
