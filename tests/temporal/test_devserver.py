"""The local server helpers start real servers from the pinned wheels and clean them up."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from temporalio import workflow
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dvt_adapters_temporal.search_attributes import SEARCH_ATTRIBUTE_NAMES
from dvt_local import lifecycle
from dvt_local import temporal as devserver


@workflow.defn(name="devserver-check.wait")
class WaitForever:
    """Waits on a signal; used to prove a workflow survives a server restart."""

    def __init__(self) -> None:
        self._done = False

    @workflow.signal
    def finish(self) -> None:
        """Let the run end."""
        self._done = True

    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.wait_condition(lambda: self._done, timeout=timedelta(minutes=5))
        except TimeoutError:
            return "timed out"
        return "done"


def test_wheel_binaries_are_found_and_pinned() -> None:
    dev = devserver.dev_server_path()
    test = devserver.test_server_path()
    assert dev.name == "temporal"
    assert os.access(dev, os.X_OK)
    assert test.name == "temporal-test-server"
    assert os.access(test, os.X_OK)


async def test_dev_server_registers_dvt_search_attributes(
    temporal_env: WorkflowEnvironment,
) -> None:
    resp = await temporal_env.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=temporal_env.client.namespace)
    )
    for name in SEARCH_ATTRIBUTE_NAMES:
        assert name in resp.custom_attributes


async def test_background_dev_server_keeps_runs_across_restart(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    up = devserver.dev_server_up(state)
    info = up.record
    assert up.started
    try:
        assert devserver.read_dev_server(state) == info
        # A second start finds the running server instead of starting another.
        again = devserver.dev_server_up(state)
        assert not again.started
        assert again.record.pid == info.pid
        client = await Client.connect(info.address)
        wf_id = f"persist-{uuid.uuid4()}"
        await client.start_workflow(WaitForever.run, id=wf_id, task_queue="devserver-check")
        # A crash: the process dies, the record keeps its port.
        crashed = psutil.Process(info.pid)
        crashed.kill()
        crashed.wait(10)
        assert devserver.read_dev_server(state) is None
        back = devserver.dev_server_up(state)
        assert back.restarted
        assert back.record.address == info.address
        client = await Client.connect(back.record.address)
        handle = client.get_workflow_handle(wf_id)
        async with Worker(client, task_queue="devserver-check", workflows=[WaitForever]):
            await handle.signal(WaitForever.finish)
            assert await handle.result() == "done"
    finally:
        devserver.stop_dev_server(state)
    assert devserver.read_dev_server(state) is None
    assert not lifecycle.alive(info.pid)


def test_stop_without_server_reports_false(tmp_path: Path) -> None:
    assert devserver.stop_dev_server(tmp_path) is False


def test_missing_wheel_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devserver, "DEV_SERVER_VERSION", "0.0.0")
    with pytest.raises(devserver.DevServerError) as err:
        devserver.dev_server_path()
    assert err.value.code == "ENGINE_UNAVAILABLE"
    assert "pins 0.0.0" in str(err.value)


async def test_time_skipping_server_skips_timers(time_skipping: WorkflowEnvironment) -> None:
    async with Worker(time_skipping.client, task_queue="ts-check", workflows=[WaitForever]):
        # Five minutes of workflow time pass without waiting for them.
        handle = await time_skipping.client.start_workflow(
            WaitForever.run, id=f"ts-{uuid.uuid4()}", task_queue="ts-check"
        )
        assert await handle.result() == "timed out"
