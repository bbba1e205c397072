"""The child process of a ``dbt`` step: ``python -m dvt_steps.dbt_child RESULT -- ARGS...``.

It runs dbt-core's programmatic runner (``dbtRunner``) on ARGS and writes a small JSON verdict
to RESULT: ``{"success", "exception"}``. The step reads everything else (run_results.json,
manifest.json) from the target path. dbt runs here rather than in the worker's process because
dbtRunner cannot be interrupted: a child in a process group of its own can be killed whole.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    """Run dbt; exit 0 when it succeeded, 1 when nodes failed, 2 when dbt itself failed."""
    if len(argv) < 2 or argv[1] != "--":
        print("usage: python -m dvt_steps.dbt_child RESULT -- DBT_ARGS...", file=sys.stderr)
        return 2
    result_path, args = argv[0], argv[2:]
    from dbt.cli.main import dbtRunner

    res = dbtRunner().invoke(args)
    exception = None if res.exception is None else \
        f"{type(res.exception).__name__}: {res.exception}"
    with open(result_path, "w", encoding="utf-8") as file:
        json.dump({"success": bool(res.success), "exception": exception}, file)
    if res.success:
        return 0
    return 2 if res.exception is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
