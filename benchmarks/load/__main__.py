"""`python -m benchmarks.load --rate 1000/min --minutes 10 --engine temporal --chaos all`.

Exit 0 when every run is correct and every target is met, 1 when a target is missed, 2 when
a run is wrong (lost, duplicated or hung events, a snapshot unequal to its rebuild).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from benchmarks.load import run
from benchmarks.load.options import parse
from benchmarks.load.report import render, write_json


async def _cancellable(work: Any) -> Any:
    """``work`` cancelled by SIGTERM/SIGINT, so its servers are stopped and removed."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task


def main(argv: list[str] | None = None) -> int:
    """Run the load and print its report; the exit code."""
    options = parse(argv)
    report = asyncio.run(_cancellable(run(options)))
    print(render(report), flush=True)
    if options.json_path:
        write_json(report, options.json_path)
    if not report["correct"]:
        return 2
    return 0 if report["fast"] else 1


if __name__ == "__main__":
    sys.exit(main())
