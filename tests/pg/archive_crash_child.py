"""An archiver process that stops at one stage and waits there to be killed.

Usage: ``python archive_crash_child.py STAGE STORE_URL COLD_ROOT``. At STAGE it prints
``at STAGE`` and blocks on its standard input, so the parent kills it at exactly that point.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from dvt_archive.archiver import archive_runs


def main() -> None:
    """Run one archiver pass that halts at the stage named on the command line."""
    wanted, store_url, root = sys.argv[1:4]

    def on_stage(name: str) -> None:
        if name == wanted:
            print(f"at {name}", flush=True)
            sys.stdin.read()  # the parent's SIGKILL ends the process here

    asyncio.run(archive_runs(store_url, root, older_than=timedelta(0), batch_runs=2,
                             on_stage=on_stage))
    print("done", flush=True)


if __name__ == "__main__":
    main()
