"""The checked-in OpenAPI document (docs/openapi.json), generated from the routes.

``python -m dvt_api.openapi`` rewrites it; ``--check`` fails when the code and the file differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dvt_api.app import create_app
from dvt_api.settings import ApiSettings

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the app (no store or engine is opened)."""
    spec: dict[str, Any] = create_app(ApiSettings(dev=True)).openapi()
    return spec


def render() -> str:
    """The document as the checked-in text."""
    return json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/openapi.json, or with --check report whether it is current."""
    parser = argparse.ArgumentParser(prog="python -m dvt_api.openapi")
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOC_PATH.read_text("utf-8") if DOC_PATH.exists() else ""
        if current != text:
            print(f"{DOC_PATH.name} is stale: run python -m dvt_api.openapi", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.write_text(text, "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
