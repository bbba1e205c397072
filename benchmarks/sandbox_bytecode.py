"""Bytecode for the modules a Temporal workflow sandbox imports afresh on every workflow run.

The sandbox executes each non-passthrough module of a workflow again for every workflow run.
An installed package has its bytecode (pip compiles at install), so each run only executes it;
a checkout run with ``PYTHONDONTWRITEBYTECODE`` set has none, and each run then compiles the
module from source: about 3 ms for dvt's workflow module and 4 ms for this directory's
benchmark file, on the benchmark's 2-core machine. The benchmarks write the bytecode first, so
both sides are measured as installed code and the figures do not depend on the environment.
"""

from __future__ import annotations

import compileall
import importlib.util
import py_compile
from pathlib import Path


def compile_for_sandbox(*modules: str, files: tuple[Path, ...] = ()) -> None:
    """Write bytecode for ``modules`` (packages: every module in them) and ``files``."""
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(name)
        if spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                compileall.compile_dir(location, quiet=1, force=False)
        else:
            py_compile.compile(spec.origin, doraise=True)
    for path in files:
        py_compile.compile(str(path), doraise=True)
