"""The load harness in its one-minute smoke form, on real servers, with faults (CI runs it).

It asserts correctness only, never speed: every run completes, every run's log is whole
(runSeq 1..n, nothing written twice) and its stored snapshot equals the projector's rebuild,
after a PostgreSQL crash and restart, a worker process SIGKILLed and replaced, a Temporal dev
server restart and a failover to a streaming standby, all under load.
"""

from __future__ import annotations

from benchmarks.load import run
from benchmarks.load.options import LoadOptions, Targets
from benchmarks.load.report import render

CHAOS = ("pg-restart", "worker-kill", "temporal-restart", "pg-failover")


async def test_one_minute_of_load_with_faults_loses_and_duplicates_nothing() -> None:
    # Each run is two 1.5 s sleep steps, started twice a second: whenever a fault hits, the
    # runs started in the last 3 s are still running, so every fault meets runs in flight.
    options = LoadOptions(engine="temporal", rate_per_s=2.0, minutes=1.0, steps=2,
                          step_ms=1500, chaos=CHAOS, drain_s=150.0, targets=Targets())
    report = await run(options)
    print(render(report))  # the numbers, for the CI log; speed is not asserted
    assert report["correctnessProblems"] == []
    assert report["runsStarted"] >= 100
    assert report["runsVerified"] == report["runsStarted"] == report["runsCompleted"]
    assert [c["kind"] for c in report["chaos"]] == list(CHAOS)
    for fault in report["chaos"]:
        assert fault["error"] is None, fault
        assert fault["in_flight"] > 0, fault
        assert fault["in_flight_done_s"] is not None, fault  # every run it hit has ended
    # Where the CPU went is reported for every part of the run, restarted processes included.
    assert set(report["cpu"]["seconds"]) == {"driver", "workers", "engine server", "postgres"}
    assert all(seconds > 0 for seconds in report["cpu"]["seconds"].values()), report["cpu"]
