"""A purge or retention process that stops at one stage and waits there to be killed.

Usage: ``python erasure_crash_child.py purge|retention STAGE STORE_URL COLD_ROOT KEY_PEM
TENANT``. At STAGE it prints ``at STAGE`` and blocks on its standard input, so the parent
kills it at exactly that point. Retention runs two years on (a one-year term is over).
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

from dvt_archive.purge import purge_tenant
from dvt_archive.retention import apply_retention
from dvt_engine.audit_keys import load_signer


def main() -> None:
    """Run one purge or retention pass that halts at the stage named on the command line."""
    kind, wanted, store_url, root, key, tenant = sys.argv[1:7]
    signer = load_signer(key, "k1")

    def on_stage(name: str) -> None:
        if name == wanted:
            print(f"at {name}", flush=True)
            sys.stdin.read()  # the parent's SIGKILL ends the process here

    if kind == "purge":
        asyncio.run(purge_tenant(store_url, tenant, signer, actor="alice", roles=("admin",),
                                 on_stage=on_stage))
    else:
        later = datetime.now(UTC) + timedelta(days=2 * 366)
        asyncio.run(apply_retention(store_url, root, signer=signer, now=later,
                                    on_stage=on_stage))
    print("done", flush=True)


if __name__ == "__main__":
    main()
