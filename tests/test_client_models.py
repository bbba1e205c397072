"""dvt_client's hand-written models against docs/openapi.json and the core's models, and
the package's promise to import nothing of dvt but itself."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

import dvt_client.models as client_models
from dvt_engine.models.events import Event
from dvt_engine.models.run import RunStatus
from dvt_engine.models.snapshot import RunSnapshot, StepSnapshot

REPO = Path(__file__).resolve().parent.parent
OPENAPI = json.loads((REPO / "docs" / "openapi.json").read_text(encoding="utf-8"))
COMPONENTS = OPENAPI["components"]["schemas"]
#: Client models that restate a component of the document under the same name.
SAME_NAME = ["Problem", "RunList", "EventPage", "SignalAnswer", "KeyInfo", "KeyCreated"]
#: Fields the service adds to a run's snapshot (dvt_api/views.py run_document).
RUN_EXTRAS = {"engine", "labels", "checksum", "createdAt", "updatedAt"}


def _aliases(model: type[BaseModel]) -> dict[str, bool]:
    """Wire name -> whether the model requires it."""
    return {f.alias or name: f.is_required() for name, f in model.model_fields.items()}


@pytest.mark.parametrize("name", SAME_NAME)
def test_model_matches_its_openapi_component(name: str) -> None:
    model: type[BaseModel] = getattr(client_models, name)
    component = COMPONENTS[name]
    ours = _aliases(model)
    assert set(ours) == set(component["properties"]), name
    required = set(component.get("required", []))
    # A field the service always sends may be required here; one it may leave out may not.
    assert {k for k, req in ours.items() if req} <= required, name
    for prop, schema in component["properties"].items():
        if "enum" in schema:
            field = model.model_fields[next(n for n, f in model.model_fields.items()
                                            if (f.alias or n) == prop)]
            assert set(typing.get_args(field.annotation)) == set(schema["enum"]), prop


def test_the_document_still_has_every_component_the_client_restates() -> None:
    assert set(SAME_NAME) <= set(COMPONENTS)
    signal = COMPONENTS["SignalBody"]["properties"]["type"]["enum"]
    assert set(typing.get_args(client_models.SignalType)) == set(signal)


def test_run_and_event_models_follow_the_core() -> None:
    snapshot = {f.alias or n for n, f in RunSnapshot.model_fields.items()}
    assert set(_aliases(client_models.Run)) <= snapshot | RUN_EXTRAS
    step = {f.alias or n for n, f in StepSnapshot.model_fields.items()}
    assert set(_aliases(client_models.StepSnapshot)) <= step
    event = {f.alias or n for n, f in Event.model_fields.items()}
    assert set(_aliases(client_models.RunEvent)) <= event
    assert set(typing.get_args(client_models.RunStatusName)) == {s.value for s in RunStatus}


def test_dvt_client_imports_only_httpx_pydantic_and_the_standard_library() -> None:
    allowed = {"httpx", "pydantic", "dvt_client", "__future__"}
    for path in (REPO / "dvt_client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, (path.name, name)
    done = subprocess.run(
        [sys.executable, "-c", "import sys, dvt_client; print(sorted({m.split('.')[0] for m "
         "in sys.modules if m.startswith('dvt')}))"],
        capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "['dvt_client']"
