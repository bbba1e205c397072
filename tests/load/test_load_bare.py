"""The bare Temporal mode of the load harness (`--engine temporal-bare`) on a real dev server.

Twenty seconds at five runs a second: every bare workflow started is seen ending, its history
holds one start, one activity and one completion, and the report has its per-minute row and
the CPU of the parts it runs (no PostgreSQL: the bare mode starts none). Speed is not asserted.
"""

from __future__ import annotations

from benchmarks.load import run
from benchmarks.load.options import LoadOptions, Targets
from benchmarks.load.report import render


async def test_twenty_seconds_of_bare_temporal_load_complete_every_workflow_once() -> None:
    options = LoadOptions(engine="temporal-bare", rate_per_s=5.0, minutes=20 / 60,
                          drain_s=60.0, targets=Targets())
    report = await run(options)
    print(render(report))  # the numbers, for the log; speed is not asserted
    assert report["correctnessProblems"] == []
    assert report["runsStarted"] == 100  # the open-loop schedule: one start every 0.2 s
    assert report["runsVerified"] == report["runsCompleted"] == report["runsStarted"]
    [minute] = report["minutes"]
    assert minute["started"] == 100
    assert minute["p50"] is not None
    assert minute["p99"] is not None
    assert minute["workerRssMB"]
    assert minute["driverRssMB"]
    assert set(report["cpu"]["seconds"]) == {"driver", "workers", "engine server"}
    assert all(seconds > 0 for seconds in report["cpu"]["seconds"].values()), report["cpu"]
    assert "minute  started  done/min" in render(report)
