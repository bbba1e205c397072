"""The `dvt` command on the reference engine and the memory store: exit codes, JSON shapes of
contract §13, coded errors with hints and no traceback, options from the environment.

The command tests of run, validate, status, events, runs and signal that hold in local and
remote mode alike run in both modes in tests/api/test_cli_remote.py; here is what is local
(the memory store, identity options, parity, the default engine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import PLANS, Result, invoke

from dvt_cli import ops, runs, settings
from dvt_engine.errors import UsageError
from dvt_engine.models.signals import Role


@pytest.fixture
def dvt(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Any:
    """``dvt(*args, **env)``: the reference engine, a private DVT_HOME, nothing else set."""

    def call(*args: str, **env: str) -> Result:
        base = {"DVT_HOME": str(tmp_path / "home"), "DVT_ENGINE": "reference"}
        return invoke(capsys, list(args), {**base, **env})

    return call


def write_plan(tmp_path: Path, steps: list[dict[str, Any]], **metadata: Any) -> str:
    plan = {"metadata": {"planId": "t", "planVersion": "1", "schemaVersion": "v1.2", **metadata},
            "steps": steps}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return str(path)


def assert_error(result: Result, code: str) -> dict[str, Any]:
    assert result.code == 2, result
    doc = result.json()
    assert set(doc) == {"error"}
    assert set(doc["error"]) == {"code", "message", "details"}
    assert doc["error"]["code"] == code, doc
    assert isinstance(doc["error"]["message"], str)
    assert doc["error"]["message"]
    assert "Traceback" not in result.stderr
    error: dict[str, Any] = doc["error"]
    return error


def test_help_lists_every_command(dvt: Any) -> None:
    result = dvt("--help")
    assert result.code == 0
    for name in ("run", "validate", "status", "events", "signal", "parity", "runs", "migrate",
                 "store", "worker", "dev"):
        assert f"  {name} " in result.stdout


def test_run_for_people_shows_progress_and_snapshot(dvt: Any) -> None:
    result = dvt("run", str(PLANS / "diamond.json"))
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run ")
    assert "started on reference" in lines[0]
    started = [line for line in lines if "StepStarted" in line]
    assert {line.split("] ", 1)[1].split(":")[0] for line in started} == {"a", "b", "c", "d"}
    assert any("run: RunCompleted" in line for line in lines)
    assert any(line.startswith("checksum ") for line in lines)
    assert "in-memory store" in result.stderr


def test_errors_for_people_show_code_and_hint_without_traceback(dvt: Any) -> None:
    result = dvt("run", str(PLANS / "cycle.json"))
    assert result.code == 2
    assert "error PLAN_INVALID:" in result.stderr
    assert "hint: Run `dvt validate PLAN`" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_click_usage_errors_are_coded_too(dvt: Any) -> None:
    assert_error(dvt("run", "--json"), "USAGE_ERROR")
    bad_engine = dvt("run", "x.json", "--engine", "nomad")
    assert bad_engine.code == 2
    assert "error USAGE_ERROR" in bad_engine.stderr
    assert "hint: see `dvt run --help`" in (
        bad_engine.stderr)


def test_identity_comes_from_the_environment_and_options_win(dvt: Any) -> None:
    env = {"DVT_TENANT": "acme", "DVT_PROJECT": "dw", "DVT_ENVIRONMENT": "prod"}
    snap = dvt("run", str(PLANS / "one-step.json"), "--json", **env).json()["snapshot"]
    assert (snap["tenantId"], snap["projectId"], snap["environmentId"]) == ("acme", "dw", "prod")
    snap = dvt("run", str(PLANS / "one-step.json"), "--json", "--tenant", "other",
               **env).json()["snapshot"]
    assert snap["tenantId"] == "other"


def test_engine_comes_from_the_environment(dvt: Any) -> None:
    result = dvt("run", str(PLANS / "one-step.json"), "--json", DVT_ENGINE="conductorx")
    assert_error(result, "USAGE_ERROR")


def test_hostile_identity_is_refused_with_its_code(dvt: Any) -> None:
    result = dvt("run", str(PLANS / "one-step.json"), "--json", DVT_TENANT="a|b")
    error = assert_error(result, "IDENTIFIER_INVALID")
    assert error["details"]["field"] == "tenant"


def test_status_of_an_unknown_run_explains_the_memory_store(dvt: Any) -> None:
    error = assert_error(dvt("status", "no-such-run", "--json"), "RUN_NOT_FOUND")
    assert "in-memory store" in error["details"]["hint"]
    events = dvt("events", "no-such-run")
    assert events.code == 2
    assert "RUN_NOT_FOUND" in events.stderr


def test_detach_needs_a_lasting_store(dvt: Any) -> None:
    error = assert_error(dvt("run", str(PLANS / "one-step.json"), "--detach", "--json"),
                         "USAGE_ERROR")
    assert "dvt dev up" in error["details"]["hint"]


def test_parity_of_two_reference_engines_is_equal(dvt: Any) -> None:
    result = dvt("parity", str(PLANS / "diamond.json"), "--engines", "reference,reference",
                 "--json")
    assert result.code == 0, result
    doc = result.json()
    assert set(doc) == {"equal", "checksums", "differences"}
    assert doc["equal"] is True
    assert doc["differences"] == []
    assert len(doc["checksums"]) == 2
    assert len(set(doc["checksums"].values())) == 1


def test_parity_needs_two_engines(dvt: Any) -> None:
    assert_error(dvt("parity", str(PLANS / "diamond.json"), "--engines", "reference", "--json"),
                 "USAGE_ERROR")


def test_parity_document_with_differences_is_not_equal() -> None:
    from contract_tests.parity import Difference, ParityReport

    same = ParityReport(labels=("a", "b"), checksums={"a": "1", "b": "1"})
    other = ParityReport(labels=("a", "c"), checksums={"a": "1", "c": "2"},
                         differences=[Difference("checksum", "snapshot checksums differ")])
    merged = ops.merge_parity([same, other])
    assert merged["equal"] is False
    assert merged["checksums"] == {"a": "1", "b": "1", "c": "2"}
    assert merged["differences"][0]["kind"] == "checksum"
    assert ops.merge_parity([same])["equal"] is True


def test_default_engine_falls_back_with_a_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "engine_importable", lambda name: False)
    name, notice = settings.choose_engine(None)
    assert name == "reference"
    assert notice is not None
    assert "dvt[temporal]" in notice
    monkeypatch.setattr(settings, "engine_importable", lambda name: name == "temporal")
    assert settings.choose_engine(None) == ("temporal", None)
    assert settings.choose_engine("conductor") == ("conductor", None)


def test_roles_parse_and_unknown_roles_are_refused() -> None:
    assert settings.parse_roles(None) == (Role.ADMIN, Role.APPROVER)
    assert settings.parse_roles("operator, Engineer,operator") == (Role.OPERATOR, Role.ENGINEER)
    with pytest.raises(UsageError) as caught:
        settings.parse_roles("root")
    assert caught.value.details["role"] == "root"


@pytest.mark.parametrize(
    ("action", "step", "reason", "payload"),
    [
        ("pause", None, "lunch", {"reason": "lunch"}),
        ("resume", None, None, {}),
        ("cancel", None, None, {}),
        ("retry-step", "s", "fixed", {"stepId": "s", "reason": "fixed"}),
        ("skip-step", "s", None, {"stepId": "s"}),
        ("approve", "gate", "ok", {"stepId": "gate", "decision": "approve", "comment": "ok"}),
        ("reject", "gate", None, {"stepId": "gate", "decision": "reject"}),
    ],
)
def test_signal_payloads(action: str, step: str | None, reason: str | None,
                         payload: dict[str, Any]) -> None:
    options = runs.SignalOptions(run_id="r", action=action, step_id=step, reason=reason)
    assert runs.signal_payload(options) == payload


def test_a_custom_signal_is_its_name_and_payload() -> None:
    data = runs.parse_signal_data("file-arrived", '{"rows": 42}')
    options = runs.SignalOptions(run_id="r", action="file-arrived", data=data)
    assert options.custom
    assert runs.signal_payload(options) == {"name": "file-arrived", "data": {"rows": 42}}
    assert runs.parse_signal_data("file-arrived", None) == {}
    assert runs.parse_signal_data("pause", None) is None


@pytest.mark.parametrize(("action", "text", "message"), [
    ("pause", "{}", "takes no --payload"),
    ("file-arrived", "{rows", "not JSON"),
    ("file-arrived", "[1, 2]", "must be a JSON object"),
])
def test_custom_signal_arguments_are_checked(action: str, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        runs.parse_signal_data(action, text)


def test_a_custom_signal_takes_no_step_and_a_valid_name(dvt: Any) -> None:
    with pytest.raises(UsageError, match="takes no step id"):
        runs.signal_payload(runs.SignalOptions(run_id="r", action="file-arrived", step_id="s"))
    assert_error(dvt("signal", "r", "bad|name", "--json"), "IDENTIFIER_INVALID")


def test_signal_step_argument_is_checked(dvt: Any) -> None:
    with pytest.raises(UsageError):
        runs.signal_payload(runs.SignalOptions(run_id="r", action="approve"))
    with pytest.raises(UsageError):
        runs.signal_payload(runs.SignalOptions(run_id="r", action="pause", step_id="s"))
    result = dvt("signal", "r", "retry-step", "--json")
    assert_error(result, "USAGE_ERROR")


def test_unknown_role_from_the_environment(dvt: Any) -> None:
    assert_error(dvt("signal", "ghost", "pause", "--json", DVT_ROLES="root"), "USAGE_ERROR")


def test_store_commands_need_postgresql(dvt: Any) -> None:
    for args in (["migrate"], ["store", "rebuild"]):
        error = assert_error(dvt(*args, "--json", DVT_STORE_URL="memory://"), "USAGE_ERROR")
        assert "postgresql" in error["details"]["hint"]


def test_unknown_store_scheme(dvt: Any) -> None:
    assert_error(dvt("status", "r", "--json", "--store", "redis://x"), "STORE_NOT_FOUND")


def test_dev_status_with_nothing_running(dvt: Any) -> None:
    result = dvt("dev", "status", "--json")
    assert result.code == 0, result
    status = result.json()
    assert set(status) == {"postgres", "temporal", "conductor"}
    assert not any(part["running"] for part in status.values())


def _plain_golden_scenarios() -> list[tuple[str, str]]:
    """Golden scenarios that just run their plan (no signals, default identity, registry ref)."""
    scenarios = PLANS.parent / "scenarios"
    picked = []
    for path in sorted(scenarios.glob("*.json")):
        doc = json.loads(path.read_text())
        plain = not doc.get("actions") and not doc.get("context") and not doc.get("planRef")
        if plain and isinstance(doc.get("plan"), str):
            picked.append((path.stem, doc["plan"]))
    return picked


@pytest.mark.parametrize(("scenario", "plan"), _plain_golden_scenarios())
def test_run_reproduces_the_golden_outcome(dvt: Any, scenario: str, plan: str) -> None:
    expected = json.loads((PLANS.parent / "expected" / f"{scenario}.json").read_text())
    result = dvt("run", str(PLANS / plan), "--json", "--tenant", "acme", "--project",
                 "analytics", "--environment", "dev")
    if expected.get("status") in ("COMPLETED", "FAILED", "CANCELLED"):
        assert result.code == (0 if expected["status"] == "COMPLETED" else 1), result
        doc = result.json()
        assert doc["status"] == expected["status"]
        assert doc["snapshotChecksum"] == expected["snapshotChecksum"]
    else:
        # Refused before start: the expectation records the error code.
        assert result.code == 2, result
        assert result.json()["error"]["code"] == expected["error"]["code"]


def test_unimportable_handler_module_is_a_usage_error(dvt: Any) -> None:
    error = assert_error(dvt("run", str(PLANS / "one-step.json"), "--json", "--handlers",
                             "no_such_module_for_dvt"), "USAGE_ERROR")
    assert error["details"]["module"] == "no_such_module_for_dvt"


def _golden_scenarios() -> list[tuple[str, str]]:
    scenarios = PLANS.parent / "scenarios"
    found = []
    for path in sorted(scenarios.glob("*.json")):
        plan = json.loads(path.read_text()).get("plan")
        if isinstance(plan, str):
            found.append((path.stem, plan))
    return found


@pytest.mark.parametrize(("scenario", "plan"), _golden_scenarios())
def test_parity_of_two_reference_engines_on_every_golden_scenario(
    dvt: Any, scenario: str, plan: str
) -> None:
    result = dvt("parity", str(PLANS / plan), "--scenario",
                 str(PLANS.parent / "scenarios" / f"{scenario}.json"),
                 "--engines", "reference,reference", "--json")
    assert result.code == 0, result
    doc = result.json()
    assert doc["equal"] is True, doc["differences"]
    expected = json.loads((PLANS.parent / "expected" / f"{scenario}.json").read_text())
    if expected.get("snapshotChecksum"):
        assert set(doc["checksums"].values()) == {expected["snapshotChecksum"]}
