"""Write the JSON Schema of every public model into dvt_engine/schemas/ (stable formatting).

Run ``python -m dvt_engine.schemas.export`` after changing a model; ``--check`` only reports
files that differ, for CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from dvt_engine.models.events import PAYLOAD_MODELS, AppendResult, Event
from dvt_engine.models.plan import ExecutionPlan, PlanRef
from dvt_engine.models.run import (
    EngineRunRef,
    RunContext,
    RunHeader,
    RunStatusSnapshot,
    RunSummary,
)
from dvt_engine.models.signals import SIGNAL_PAYLOAD_MODELS, SignalDecision, SignalRequest
from dvt_engine.models.snapshot import ArtifactRef, RunSnapshot, StepSnapshot
from dvt_engine.models.validation import ValidationReport

SCHEMA_DIR = Path(__file__).resolve().parent
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _schema_of(target: type[BaseModel] | TypeAdapter[Any], title: str) -> dict[str, Any]:
    if isinstance(target, TypeAdapter):
        schema = target.json_schema(by_alias=True, mode="validation")
    else:
        schema = target.model_json_schema(by_alias=True, mode="validation")
    schema = {"$schema": DIALECT, "$id": f"urn:dvt:schema:{title}", **schema}
    schema.setdefault("title", title)
    return schema


def build_schemas() -> dict[str, dict[str, Any]]:
    """Every exported schema, by file stem."""
    models: dict[str, type[BaseModel] | TypeAdapter[Any]] = {
        "ExecutionPlan": ExecutionPlan,
        "PlanRef": PlanRef,
        "RunContext": RunContext,
        "RunHeader": RunHeader,
        "EngineRunRef": TypeAdapter(EngineRunRef),
        "SignalRequest": SignalRequest,
        "SignalDecision": SignalDecision,
        "Event": Event,
        "AppendResult": AppendResult,
        "RunStatusSnapshot": RunStatusSnapshot,
        "RunSummary": RunSummary,
        "RunSnapshot": RunSnapshot,
        "StepSnapshot": StepSnapshot,
        "ArtifactRef": ArtifactRef,
        "ValidationReport": ValidationReport,
    }
    for signal_type, payload_model in SIGNAL_PAYLOAD_MODELS.items():
        models[f"SignalPayload.{signal_type.value}"] = payload_model
    for event_type, event_model in PAYLOAD_MODELS.items():
        models[f"EventPayload.{event_type.value}"] = event_model
    return {name: _schema_of(target, name) for name, target in sorted(models.items())}


def render(schema: Mapping[str, Any]) -> str:
    """The stable text form of a schema: sorted keys, two-space indent, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def differences(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing, stale or no longer produced."""
    wanted = {f"{name}.json": render(s) for name, s in build_schemas().items()}
    present = {p.name for p in directory.glob("*.json")}
    stale = [
        name
        for name, text in wanted.items()
        if name not in present or (directory / name).read_text(encoding="utf-8") != text
    ]
    extra = sorted(present - wanted.keys())
    return sorted(stale) + extra


def write_all(directory: Path = SCHEMA_DIR) -> list[str]:
    """Write every schema file, remove ones no model produces; returns the changed names."""
    changed = differences(directory)
    wanted = {f"{name}.json": render(s) for name, s in build_schemas().items()}
    for name, text in wanted.items():
        (directory / name).write_text(text, encoding="utf-8")
    for path in directory.glob("*.json"):
        if path.name not in wanted:
            path.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command line entry: write the schemas, or with --check report stale ones (exit 1)."""
    parser = argparse.ArgumentParser(prog="python -m dvt_engine.schemas.export")
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        stale = differences()
        for name in stale:
            print(f"stale: {name}")
        return 1 if stale else 0
    for name in write_all():
        print(f"wrote: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
