"""Generate the TypeScript and Go SDK types from docs/openapi.json: `python -m dvt_api.sdkgen`.

`--check` regenerates into a temporary directory and fails when a checked-in file differs.
The generators are the pinned ones of each SDK's lock file: openapi-typescript from
sdk/typescript/package-lock.json (installed with `npm ci` when node_modules is missing or
older than the lock file) and oapi-codegen, a `tool` of sdk/go/go.mod (`go tool`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPENAPI = ROOT / "docs" / "openapi.json"
TS_DIR = ROOT / "sdk" / "typescript"
GO_DIR = ROOT / "sdk" / "go"
TS_TYPES = TS_DIR / "src" / "openapi.ts"
GO_TYPES = GO_DIR / "types.gen.go"


class SdkToolError(RuntimeError):
    """A generator's toolchain is missing or one of its commands failed (the reason says)."""


@dataclass(frozen=True)
class Generated:
    """One generated file: where it is checked in and what the generator makes now."""

    path: Path
    text: str


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SdkToolError(f"{name} is not on PATH; the SDK generators and tests need it")
    return found


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=600)
    if done.returncode != 0:
        raise SdkToolError(f"`{' '.join(args)}` in {cwd} exited {done.returncode}:\n"
                           f"{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return done.stdout


def ensure_node_modules() -> None:
    """`npm ci` in sdk/typescript unless node_modules matches package-lock.json already."""
    marker = TS_DIR / "node_modules" / ".package-lock.json"
    lock = TS_DIR / "package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    _run([_tool("npm"), "ci", "--no-audit", "--no-fund"], TS_DIR)


def typescript_types(out_dir: Path) -> Generated:
    """src/openapi.ts as openapi-typescript makes it now."""
    ensure_node_modules()
    out = out_dir / "openapi.ts"
    _run([_tool("node"), str(TS_DIR / "node_modules" / "openapi-typescript" / "bin" / "cli.js"),
          str(OPENAPI), "-o", str(out)], TS_DIR)
    return Generated(TS_TYPES, out.read_text(encoding="utf-8"))


def go_types(out_dir: Path) -> Generated:
    """types.gen.go as oapi-codegen makes it now (the config of sdk/go, another output)."""
    out = out_dir / "types.gen.go"
    config = (GO_DIR / "oapi-codegen.yaml").read_text(encoding="utf-8")
    lines = [f"output: {out}" if line.startswith("output:") else line
             for line in config.splitlines()]
    (out_dir / "oapi-codegen.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _run([_tool("go"), "tool", "oapi-codegen", "-config", str(out_dir / "oapi-codegen.yaml"),
          str(OPENAPI)], GO_DIR)
    return Generated(GO_TYPES, out.read_text(encoding="utf-8"))


def generate(out_dir: Path) -> list[Generated]:
    """Both SDKs' generated files, made in ``out_dir``."""
    return [typescript_types(out_dir), go_types(out_dir)]


def stale(files: list[Generated]) -> list[Path]:
    """The checked-in files that differ from what the generators make now."""
    return [f.path for f in files
            if not f.path.exists() or f.path.read_text(encoding="utf-8") != f.text]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated SDK files, or with --check report the stale ones (exit 1)."""
    parser = argparse.ArgumentParser(prog="python -m dvt_api.sdkgen", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="fail when a checked-in generated file is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dvt-sdkgen-") as tmp:
        files = generate(Path(tmp))
        old = stale(files)
        if args.check:
            for path in old:
                print(f"stale: {path.relative_to(ROOT)}", file=sys.stderr)
            return 1 if old else 0
        for f in files:
            if f.path in old:
                f.path.write_text(f.text, encoding="utf-8")
                print(f"wrote {f.path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
