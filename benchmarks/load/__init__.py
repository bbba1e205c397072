"""The load and chaos harness: runs at a rate against real local servers, with faults.

``run(options)`` starts the servers (servers.py), drives the load (driver.py), checks every
run (verify.py) and returns the report (report.py); `nox -s load` and tests/load call it.
``--engine temporal-bare`` drives and checks a bare temporalio workflow instead
(bare_temporal.py, bare_driver.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Imports stay inside run(): the bare workflow's module (bare_temporal.py) is re-imported in the
# workflow sandbox for every run, and this package with it, which must import nothing heavy.
if TYPE_CHECKING:
    from benchmarks.load.options import LoadOptions


async def run(options: LoadOptions) -> dict[str, Any]:
    """Start the servers, drive the load, verify every run; the report as JSON data."""
    import asyncio

    from benchmarks.load import servers as servers_mod
    from benchmarks.load.driver import drive, load_plan
    from benchmarks.load.report import summarize
    from benchmarks.load.verify import verify_runs

    servers = await asyncio.to_thread(servers_mod.start, options.engine, list(options.chaos),
                                      options.workers, stock_server=options.stock_server)
    try:
        if options.engine == "temporal-bare":
            from benchmarks.load.bare_driver import drive_bare, verify_bare

            state, temporal = await drive_bare(options, servers)
            return summarize(options, state, await verify_bare(temporal, list(state.ended)))
        state, client = await drive(options, servers)
        try:
            deps = {s["stepId"]: list(s.get("dependsOn") or [])
                    for s in load_plan(options.steps, options.step_ms)["steps"]}
            verdict = await verify_runs(client.store, client.tenant, list(state.ended), deps,
                                        state.signals)
        finally:
            await client.close()
        return summarize(options, state, verdict)
    finally:
        await asyncio.to_thread(servers.close)
