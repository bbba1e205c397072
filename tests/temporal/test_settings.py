"""Engine options: clear errors for bad input, TLS and routing settings (no server needed)."""

from __future__ import annotations

import pytest

from dvt_adapters_temporal.engine import workflow_id_for
from dvt_adapters_temporal.settings import TemporalSettings, TlsSettings, connect
from dvt_engine.errors import ErrorCode, UsageError


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
    assert s.tls.to_sdk().domain == "temporal.example"
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


async def test_connect_without_address_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        await connect(TemporalSettings())


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
