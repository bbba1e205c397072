"""The engine probe's cache: one probe per TTL, one in flight, failures cached, the gauge set."""

from __future__ import annotations

import asyncio

from dvt_api.engine_probe import EngineProbe, probe_for
from dvt_api.metrics import ApiMetrics
from dvt_engine.errors import EngineUnavailable


class FakeEngine:
    """A fake engine whose probe the test opens, fails and counts."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def check_ready(self) -> None:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise EngineUnavailable("gone")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _gauge(metrics: ApiMetrics, engine: str) -> float | None:
    return metrics.registry.get_sample_value("dvt_engine_up", {"engine": engine})


async def test_answers_are_reused_within_the_ttl_and_probed_again_after() -> None:
    engine, clock, metrics = FakeEngine(), Clock(), ApiMetrics()
    probe = EngineProbe("temporal", probe_for(engine), metrics, ttl_s=5.0, clock=clock)
    assert (await probe.check()).up
    assert _gauge(metrics, "temporal") == 1
    engine.fail = True
    clock.now += 4.9
    assert (await probe.check()).up  # cached
    assert engine.calls == 1
    clock.now += 0.2
    down = await probe.check()
    assert (down.up, down.reason, down.engine) == (False, "ENGINE_UNAVAILABLE", "temporal")
    assert _gauge(metrics, "temporal") == 0
    assert engine.calls == 2


async def test_a_failed_probe_is_cached_too() -> None:
    engine, clock, metrics = FakeEngine(), Clock(), ApiMetrics()
    engine.fail = True
    probe = EngineProbe("conductor", probe_for(engine), metrics, ttl_s=5.0, clock=clock)
    for _ in range(10):
        assert not (await probe.check()).up
    assert engine.calls == 1
    engine.fail = False
    clock.now += 5.0
    assert (await probe.check()).up
    assert _gauge(metrics, "conductor") == 1


async def test_concurrent_callers_share_one_probe_in_flight() -> None:
    engine, metrics = FakeEngine(), ApiMetrics()
    engine.gate = asyncio.Event()
    probe = EngineProbe("temporal", probe_for(engine), metrics, ttl_s=5.0)
    waiting = [asyncio.create_task(probe.check()) for _ in range(20)]
    await engine.entered.wait()
    for _ in range(5):  # let every other caller reach the lock
        await asyncio.sleep(0)
    assert engine.calls == 1
    assert not any(t.done() for t in waiting)
    engine.gate.set()
    answers = await asyncio.gather(*waiting)
    assert all(a.up for a in answers)
    assert engine.calls == 1


async def test_an_engine_without_a_probe_is_always_up() -> None:
    metrics = ApiMetrics()
    probe = EngineProbe("reference", probe_for(object()), metrics, ttl_s=0.0)
    assert (await probe.check()).up
    assert probe.probes == 0
    assert _gauge(metrics, "reference") == 1


async def test_an_unexpected_exception_reads_as_down_with_its_name() -> None:
    async def broken() -> None:
        raise ConnectionResetError("reset")

    metrics = ApiMetrics()
    probe = EngineProbe("temporal", broken, metrics, ttl_s=0.0)
    health = await probe.check()
    assert (health.up, health.reason) == (False, "ConnectionResetError")
    assert _gauge(metrics, "temporal") == 0
