"""Engine options: clear errors for bad input, TLS and routing settings (no server needed)."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from dvt_adapters_temporal.engine import workflow_id_for
from dvt_adapters_temporal.settings import TemporalSettings, TlsSettings, connect, sdk_tls
from dvt_engine.errors import EngineError, EngineNotConfigured, ErrorCode, UsageError


def test_unknown_option_is_a_usage_error_naming_it() -> None:
    with pytest.raises(UsageError) as err:
        TemporalSettings.from_options(adress="localhost:7233")
    assert err.value.code == ErrorCode.USAGE_ERROR
    assert err.value.details["unknown"] == ["adress"]


def test_tls_files_and_routing() -> None:
    s = TemporalSettings.from_options(
        address="x:7233", tls={"server_root_ca_cert": None, "domain": "temporal.example"},
        kind_queues={"spark.submit": "spark"}, task_queue="main",
    )
    assert isinstance(s.tls, TlsSettings)
    assert sdk_tls(s.tls).domain == "temporal.example"
    assert s.queue_for("spark.submit", None) == "spark"
    assert s.queue_for("spark.submit", "special") == "special"
    assert s.queue_for("noop", None) == "main"


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(UsageError):
        TemporalSettings(continue_as_new_after_steps=0)
    with pytest.raises(UsageError):
        TemporalSettings(continue_as_new_history_bytes=10)


def test_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVT_TEMPORAL_ADDRESS", "env-host:7233")
    assert TemporalSettings.from_options().address == "env-host:7233"


async def test_connect_without_address_is_engine_not_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DVT_TEMPORAL_ADDRESS", raising=False)
    with pytest.raises(EngineNotConfigured) as err:
        await connect(TemporalSettings())
    assert err.value.code == ErrorCode.ENGINE_NOT_CONFIGURED
    assert "dvt dev up" in err.value.details["hint"]


async def test_an_engine_without_address_starts_no_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """The library never starts a dev server: the first connection fails with a coded error."""
    from dvt_adapters_temporal.engine import TemporalEngine
    from dvt_engine.stores.memory import MemoryRunStateStore
    from dvt_local import temporal as devserver

    monkeypatch.delenv("DVT_TEMPORAL_ADDRESS", raising=False)
    monkeypatch.setenv("DVT_HOME", str(tmp_path))
    engine = TemporalEngine(MemoryRunStateStore())
    with pytest.raises(EngineError) as err:
        await engine.client()
    assert err.value.code == ErrorCode.ENGINE_NOT_CONFIGURED
    written = await asyncio.to_thread(lambda: list(tmp_path.iterdir()))
    assert written == [], "nothing may be started or written under DVT_HOME"
    assert devserver.read_dev_server(tmp_path / "temporal") is None


def test_workflow_id_derives_from_the_run_request_key() -> None:
    key = "ab" * 32
    assert workflow_id_for(key) == "dvt-run-" + key
    assert workflow_id_for(key) != workflow_id_for("cd" * 32)


def test_a_process_local_store_gets_a_process_local_task_queue() -> None:
    from dvt_adapters_temporal.engine import TemporalEngine
    from dvt_engine.stores.memory import MemoryRunStateStore

    local = TemporalEngine(MemoryRunStateStore(), address="127.0.0.1:1")
    assert local.settings.task_queue != "dvt"
    assert local.settings.task_queue.endswith(f"-{__import__('os').getpid()}")
    chosen = TemporalEngine(MemoryRunStateStore(), address="127.0.0.1:1", task_queue="mine")
    assert chosen.settings.task_queue == "mine"


def test_typed_settings_reach_the_engine_through_its_entry_point() -> None:
    from dvt_adapters_temporal.engine import TemporalEngine
    from dvt_engine import HandlerRegistry, TemporalSettings, open_engine
    from dvt_engine.stores.memory import MemoryRunStateStore

    settings = TemporalSettings(address="127.0.0.1:1", task_queue="q", worker=False)
    registry = HandlerRegistry()
    engine = open_engine(settings, store=MemoryRunStateStore(), registry=registry)
    assert isinstance(engine, TemporalEngine)
    assert engine.settings is settings
    assert engine.registry is registry
    assert engine._embedded_worker is False
    with pytest.raises(UsageError):
        TemporalEngine(MemoryRunStateStore(), settings=settings, address="other:1")
