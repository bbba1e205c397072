"""The checked-in JSON Schemas: up to date, valid, and matching what dvt writes and reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from dvt_engine.models.events import Event, EventType
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import ConductorRunRef, RunContext, TemporalRunRef
from dvt_engine.models.signals import Actor, Role, SignalDecision, SignalRequest, SignalType
from dvt_engine.models.snapshot import ArtifactRef, RunSnapshot, StepSnapshot
from dvt_engine.planning.capabilities import ENGINE_CAPABILITIES
from dvt_engine.planning.validation import build_validation_report
from dvt_engine.schemas import load_schema
from dvt_engine.schemas.export import (
    SCHEMA_DIR,
    build_schemas,
    differences,
    main,
    render,
    write_all,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN = REPO_ROOT / "golden_fixtures"
GOLDEN_PLANS = sorted((GOLDEN / "plans").glob("*.json"))
SHA = "a" * 64


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name), format_checker=FormatChecker())


def test_checked_in_schemas_equal_a_fresh_export() -> None:
    assert differences() == [], "run: python -m dvt_engine.schemas.export"
    assert main(["--check"]) == 0


def test_export_writes_into_a_directory_and_reports_changes(tmp_path: Path) -> None:
    assert len(differences(tmp_path)) == len(build_schemas())
    (tmp_path / "Obsolete.json").write_text("{}", encoding="utf-8")
    changed = write_all(tmp_path)
    assert "Obsolete.json" in changed
    assert not (tmp_path / "Obsolete.json").exists()
    assert differences(tmp_path) == []
    assert write_all(tmp_path) == []


def test_expected_schema_files_exist() -> None:
    names = {p.stem for p in SCHEMA_DIR.glob("*.json")}
    required = {
        "ExecutionPlan", "PlanRef", "RunContext", "EngineRunRef", "SignalRequest",
        "SignalDecision", "Event", "RunSnapshot", "StepSnapshot", "ArtifactRef",
        "ValidationReport", "RunHeader",
    }  # fmt: skip
    assert required <= names
    assert {f"SignalPayload.{t.value}" for t in SignalType} <= names
    assert {n for n in names if n.startswith("EventPayload.")} == {
        f"EventPayload.{t.value}" for t in EventType
    }


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_schema_is_a_valid_2020_12_schema_in_stable_form(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    assert text == render(schema)
    assert schema["$id"] == f"urn:dvt:schema:{path.stem}"


# --- golden plans ---


def _expected_plan_errors() -> dict[str, set[str]]:
    """Error codes the golden scenarios expect from each plan document itself."""
    found: dict[str, set[str]] = {}
    for path in (GOLDEN / "scenarios").glob("*.json"):
        scenario = json.loads(path.read_text(encoding="utf-8"))
        if scenario.get("planRef"):  # the ref is what is wrong, not the document
            continue
        code = scenario.get("expect", {}).get("error", {}).get("code")
        if code:
            found.setdefault(scenario["plan"], set()).add(code)
    return found


def test_golden_plans_exist() -> None:
    assert GOLDEN_PLANS, f"no golden plans under {GOLDEN / 'plans'}"


@pytest.mark.parametrize("path", GOLDEN_PLANS, ids=lambda p: p.stem)
def test_golden_plans_validate_against_the_plan_schema(path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    errors = list(validator("ExecutionPlan").iter_errors(document))
    if "SCHEMA_VALIDATION_FAILED" in _expected_plan_errors().get(path.name, set()):
        assert errors, f"{path.name} is expected to break the plan schema"
    else:
        assert errors == [], [e.message for e in errors]


@pytest.mark.parametrize("path", GOLDEN_PLANS, ids=lambda p: p.stem)
def test_golden_plans_report_what_their_scenarios_expect(path: Path) -> None:
    report = build_validation_report(
        path.read_bytes(),
        engine="reference",
        capabilities=ENGINE_CAPABILITIES["reference"],
        known_kinds=(),
    )
    assert list(validator("ValidationReport").iter_errors(report.model_dump(mode="json"))) == []
    expected = _expected_plan_errors().get(path.name, set())
    plan_codes = {
        "SCHEMA_VALIDATION_FAILED",
        "PLAN_SCHEMA_VERSION_UNSUPPORTED",
        "IDENTIFIER_INVALID",
        "PLAN_INVALID",
        "STEP_KIND_UNKNOWN",
        "CAPABILITY_NOT_SUPPORTED",
    }
    wanted = expected & plan_codes
    if wanted:
        assert not report.ok
        assert report.errors[0].code in wanted
    else:
        assert report.ok, [i.message for i in report.errors]


# --- what dvt writes matches its schemas ---


NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _samples() -> list[tuple[str, Any]]:
    ids = {"tenant_id": "t", "project_id": "p", "environment_id": "e", "run_id": "r"}
    actor = Actor(id="ops", roles=(Role.OPERATOR,))
    step = StepSnapshot(step_id="a", artifacts=(ArtifactRef(uri="s3://b/k", kind="table"),))
    return [
        ("PlanRef", PlanRef(uri="plan://sha256/" + SHA, sha256=SHA, schema_version="v1.2",
                            plan_id="p", plan_version="1", size_bytes=10)),
        ("RunContext", RunContext(**ids, params={"date": "2026-11-21"})),
        ("EngineRunRef", TemporalRunRef(namespace="default", workflow_id="w", task_queue="q")),
        ("EngineRunRef", ConductorRunRef(server_url="http://127.0.0.1:8080", workflow_id="w")),
        ("SignalRequest", SignalRequest(signal_id="s", type=SignalType.PAUSE, tenant_id="t",
                                        run_id="r", actor=actor)),
        ("SignalDecision", SignalDecision(signal_id="s", type=SignalType.PAUSE, run_id="r",
                                          accepted=True, effective_role=Role.OPERATOR)),
        ("Event", Event(event_id="e1", event_type="RunStarted", plan_id="p", plan_version="1",
                        idempotency_key=SHA, emitted_at=NOW, emitted_by="engine",
                        payload={"engine": "reference"}, **ids)),
        ("StepSnapshot", step),
        ("RunSnapshot", RunSnapshot(plan_id="p", plan_version="1", steps=(step,), started_at=NOW,
                                    **ids)),
    ]  # fmt: skip


@pytest.mark.parametrize(("name", "model"), _samples())
def test_serialized_models_validate_against_their_schema(name: str, model: Any) -> None:
    document = model.model_dump(mode="json")
    assert list(validator(name).iter_errors(document)) == []


def test_schemas_refuse_what_models_refuse() -> None:
    bad_ref = {"uri": "plan://x", "sha256": "XYZ", "schemaVersion": "v1.2", "planId": "p|q",
               "planVersion": "1"}  # fmt: skip
    paths = {tuple(e.absolute_path) for e in validator("PlanRef").iter_errors(bad_ref)}
    assert {("sha256",), ("planId",)} <= paths
    pause = {"reason": "x", "unexpected": True}
    assert list(validator("SignalPayload.PAUSE").iter_errors(pause))
