"""docs/tutorial.md runs as written: every ```sh block, in order, as a reader would paste them.

Markers (an HTML comment on the line before a block, invisible when the page is rendered):

- none: the block must exit 0.
- ``<!-- tutorial-test: exit=N -->``: the block must exit N.
- ``expect="TEXT"`` (repeatable): TEXT must appear in the block's stdout or stderr.
- ``skip="REASON"``: not run (it installs packages or needs a server the test does not start);
  the reason is required and the skipped blocks are listed, so nothing is left out silently.
- ``background``: started and left running (the reader's second terminal), stopped with SIGINT
  (Ctrl-C) before the first later block marked ``stop-background``; it must then exit 0.

Blocks run with ``bash -e`` in a scratch folder holding a copy of ``examples/``, with a scratch
DVT_HOME and this interpreter's scripts first on PATH; variables a block exports carry over to
the later blocks, as in one shell. The local servers the tutorial starts (`dvt dev up`) are
stopped and purged afterwards whatever happens.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dvt_engine.planning import validate_plan_document

REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "docs" / "tutorial.md"
BLOCK_TIMEOUT_S = 180
#: Variables of the test's own shell that must not carry over between blocks.
_SHELL_VARS = {"_", "PWD", "OLDPWD", "SHLVL"}

_BLOCK = re.compile(r"(?:<!--\s*tutorial-test:(?P<marker>.*?)-->\n)?```(?P<lang>[\w-]*)\n"
                    r"(?P<body>.*?)^```\s*$", re.S | re.M)


@dataclass
class Block:
    """One fenced block of the page and what its marker asks of it."""

    line: int
    body: str
    exit_code: int = 0
    expect: list[str] = field(default_factory=list)
    skip: str | None = None
    background: bool = False
    stop_background: bool = False


def _parse_marker(block: Block, marker: str) -> None:
    for word in shlex.split(marker):
        name, _, value = word.partition("=")
        if name == "exit":
            block.exit_code = int(value)
        elif name == "expect":
            block.expect.append(value)
        elif name == "skip":
            assert value, f"line {block.line}: skip needs a reason"
            block.skip = value
        elif name == "background":
            block.background = True
        elif name == "stop-background":
            block.stop_background = True
        else:
            raise AssertionError(f"line {block.line}: unknown tutorial-test marker {word!r}")


def _blocks(text: str) -> list[Block]:
    """The page's ```sh blocks in order, with their markers."""
    blocks = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("body"))
        if match["lang"] != "sh":
            assert match["marker"] is None, f"line {line}: a marker on a block that is not sh"
            continue
        block = Block(line=line, body=match["body"])
        _parse_marker(block, match["marker"] or "")
        blocks.append(block)
    return blocks


def _environment(home: Path) -> dict[str, str]:
    # The reader's settings must not leak in: no DVT_* of the calling shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVT_")}
    env.update(DVT_HOME=str(home), PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    return env


def _run(block: Block, cwd: Path, env: dict[str, str], env_file: Path
         ) -> subprocess.CompletedProcess[str]:
    # The trap saves the block's exported variables for the next block, even when it fails.
    script = f"trap 'env -0 > {shlex.quote(str(env_file))}' EXIT\n{block.body}"
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False)


def _exported(env_file: Path) -> dict[str, str]:
    pairs = (item.partition("=") for item in env_file.read_text("utf-8").split("\0") if item)
    return {name: value for name, _, value in pairs if name not in _SHELL_VARS}


def _stop(process: subprocess.Popen[str], block: Block) -> None:
    process.send_signal(signal.SIGINT)
    try:
        out, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        raise AssertionError(f"line {block.line}: did not stop on Ctrl-C\n{out}") from None
    assert process.returncode == 0, f"line {block.line}: exit {process.returncode}\n{out}"


def test_tutorial_blocks_are_marked() -> None:
    blocks = _blocks(TUTORIAL.read_text("utf-8"))
    skipped = [b.skip for b in blocks if b.skip]
    # Two blocks need what the test cannot give; any other skip must be argued here.
    assert len(skipped) == 2, skipped
    assert sum(b.background for b in blocks) == 1
    assert len(blocks) - len(skipped) >= 15


@pytest.mark.parametrize("name", ["hello.json", "release_gate.json",
                                  "inbox_await_operator.json", "dbt_seed_run_test.json"])
def test_tutorial_plans_are_valid(name: str) -> None:
    validate_plan_document((REPO / "examples" / "plans" / name).read_bytes())
    assert f"examples/plans/{name}" in TUTORIAL.read_text("utf-8")


def test_tutorial_runs_as_written(tmp_path: Path) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    shutil.copytree(REPO / "examples", work / "examples")
    env, env_file = _environment(home), tmp_path / "env"
    background: list[tuple[subprocess.Popen[str], Block]] = []
    started = time.monotonic()
    report: list[str] = []
    try:
        for block in _blocks(TUTORIAL.read_text("utf-8")):
            if block.skip:
                report.append(f"line {block.line}: not run ({block.skip})")
                continue
            if block.stop_background:
                while background:
                    _stop(*background.pop())
            if block.background:
                background.append((subprocess.Popen(
                    ["bash", "-e", "-c", block.body], cwd=work, env=env, text=True,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT), block))
                continue
            begun = time.monotonic()
            done = _run(block, work, env, env_file)
            output = done.stdout + done.stderr
            report.append(f"line {block.line}: exit {done.returncode} "
                          f"in {time.monotonic() - begun:.1f} s")
            assert done.returncode == block.exit_code, (
                f"line {block.line}: exit {done.returncode}, expected {block.exit_code}\n"
                f"{block.body}\n--- output ---\n{output}")
            for text in block.expect:
                assert text in output, (f"line {block.line}: {text!r} not in the output\n"
                                        f"{block.body}\n--- output ---\n{output}")
            if env_file.exists():
                env = _exported(env_file)
        assert not background, "a background block was never stopped"
    finally:
        for process, _ in background:
            process.kill()
            process.wait()
        subprocess.run(["dvt", "dev", "down", "--purge"], cwd=work, env=env,
                       capture_output=True, timeout=120, check=False)
        print("\n".join(report), f"\ntutorial: {time.monotonic() - started:.1f} s")



def test_markers_are_read_and_unknown_ones_refused() -> None:
    text = ('<!-- tutorial-test: exit=1 expect="a b" expect=c -->\n```sh\nfalse\n```\n'
            "```json\n{}\n```\n```sh\ntrue\n```\n")
    first, second = _blocks(text)
    assert (first.exit_code, first.expect, first.body) == (1, ["a b", "c"], "false\n")
    assert (second.exit_code, second.expect, second.skip) == (0, [], None)
    with pytest.raises(AssertionError, match="unknown"):
        _blocks("<!-- tutorial-test: exits=1 -->\n```sh\ntrue\n```\n")
    with pytest.raises(AssertionError, match="reason"):
        _blocks('<!-- tutorial-test: skip="" -->\n```sh\ntrue\n```\n')
