"""Typed engine and store settings: arguments, then DVT_* environment variables, then defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dvt_engine import (
    ConductorSettings,
    MemoryStoreSettings,
    PostgresStoreSettings,
    ReferenceSettings,
    RequestError,
    TemporalSettings,
    open_engine,
)
from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.stores.memory import MemoryRunStateStore


def test_environment_fills_what_arguments_leave_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVT_TEMPORAL_ADDRESS", "env-host:7233")
    monkeypatch.setenv("DVT_TEMPORAL_NAMESPACE", "prod")
    monkeypatch.setenv("DVT_TEMPORAL_KIND_QUEUES", '{"spark.submit": "spark"}')
    monkeypatch.setenv("DVT_CONDUCTOR_URL", "http://conductor:8080/api")
    monkeypatch.setenv("DVT_STORE_URL", "postgresql://u:secret@db/dvt")
    monkeypatch.setenv("DVT_STORE_POOL_MAX", "4")
    t = TemporalSettings(namespace="mine")
    assert t.address == "env-host:7233"
    assert t.namespace == "mine"  # an argument wins over the environment
    assert t.queue_for("spark.submit", None) == "spark"
    assert ConductorSettings().url == "http://conductor:8080/api"
    pg = PostgresStoreSettings()
    assert pg.store_url() == "postgresql://u:secret@db/dvt"
    assert pg.store_options() == {"pool_max": 4}
    assert "secret" not in repr(pg)


def test_bad_values_are_coded_usage_errors() -> None:
    with pytest.raises(RequestError) as err:
        TemporalSettings(adress="x:1")  # type: ignore[call-arg]
    assert err.value.code == "USAGE_ERROR"
    assert err.value.details["errors"][0]["field"] == "adress"
    with pytest.raises(RequestError):
        TemporalSettings(heartbeat_timeout_s=0)
    with pytest.raises(RequestError):
        ConductorSettings(lease_s="soon")  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    settings = TemporalSettings(address="a:1")
    with pytest.raises(ValidationError, match="frozen"):
        settings.address = "b:2"  # type: ignore[misc]


def test_memory_store_settings_name_the_memory_store() -> None:
    assert MemoryStoreSettings().store_url() == "memory://"


def test_reference_settings_reach_the_engine() -> None:
    engine = open_engine(ReferenceSettings(cancel_in_flight_on_pause=True),
                         store=MemoryRunStateStore())
    assert isinstance(engine, ReferenceEngine)
    assert engine.cancel_in_flight_on_pause is True
