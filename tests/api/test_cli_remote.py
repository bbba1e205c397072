"""The command tests of run, validate, status, events, runs and signal, shared by both modes:
each test runs twice, locally (the reference engine in the command, a PostgreSQL store) and
through a real `dvt serve` with `dvt --api URL` (the service's reference engine on its store),
and expects the same output and exit codes. Tests of one mode only say so in their name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from api_helpers import ApiServer, tenant
from cli_helpers import PLANS, Result, invoke
from live_helpers import counts_in, draw_on_terminal, last_frame
from rich.console import Console

from dvt_engine.checksum import snapshot_checksum
from dvt_engine.models.snapshot import RunSnapshot

RUN_KEYS = {"runId", "status", "snapshot", "snapshotChecksum"}
ROLES = ("runner", "reader", "operator", "approver")


@pytest.fixture(params=["local", "remote"])
def mode(request: pytest.FixtureRequest) -> str:
    """Which way the commands go."""
    return str(request.param)


@pytest.fixture
def dvt(mode: str, api_server: ApiServer, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> Any:
    """``dvt(*args)`` in ``mode``: a fresh tenant either way."""
    t = tenant()
    if mode == "remote":
        env = {"DVT_API_URL": api_server.base_url, "DVT_API_KEY": api_server.key(t, *ROLES),
               "DVT_HOME": str(tmp_path / "home")}
    else:
        env = {"DVT_STORE_URL": api_server.store_url, "DVT_TENANT": t, "DVT_ENGINE": "reference",
               "DVT_HOME": str(tmp_path / "home")}

    def call(*args: str) -> Result:
        return invoke(capsys, list(args), env)

    return call


@pytest.fixture
def remote_dvt(api_server: ApiServer, capsys: pytest.CaptureFixture[str]) -> Any:
    """``dvt(*args)`` through the service only."""
    env = {"DVT_API_URL": api_server.base_url, "DVT_API_KEY": api_server.key(tenant(), *ROLES)}
    return lambda *args: invoke(capsys, list(args), env)


def _write(tmp_path: Path, steps: list[dict[str, Any]]) -> str:
    plan = {"metadata": {"planId": "t", "planVersion": "1", "schemaVersion": "v1.2"},
            "steps": steps}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return str(path)


def _error(result: Result, code: str) -> dict[str, Any]:
    assert result.code == 2, result
    doc = result.json()
    assert set(doc) == {"error"}
    assert doc["error"]["code"] == code, doc
    assert doc["error"]["message"]
    assert "Traceback" not in result.stderr
    error: dict[str, Any] = doc["error"]
    return error


def test_run_json_is_the_contract_shape(dvt: Any) -> None:
    result = dvt("run", str(PLANS / "one-step.json"), "--json", "--run-id", "r-one")
    assert result.code == 0, result
    doc = result.json()
    assert set(doc) == RUN_KEYS
    assert (doc["runId"], doc["status"]) == ("r-one", "COMPLETED")
    snapshot = RunSnapshot.model_validate(doc["snapshot"])
    assert snapshot.run_id == "r-one"
    assert doc["snapshotChecksum"] == snapshot_checksum(snapshot)
    assert snapshot.step("hello").status == "SUCCESS"
    assert snapshot.step("hello").output == {"greeting": "hello", "n": 1}
    assert len(result.stdout.strip().splitlines()) == 1


def _normalised(text: str) -> list[str]:
    """Lines without what differs between two runs (ids, durations, checksums)."""
    lines = []
    for line in text.splitlines():
        if line.startswith(("duration ", "checksum ")):
            continue
        # Parallel steps may interleave differently in two runs: their runSeq goes too.
        line = re.sub(r"^\[\s*\d+\] ", "", re.sub(r"run \S+ ", "run RUN ", line))
        lines.append(re.sub(r"\d{4}-\d\d-\d\dT\S+", "TIME", line))
    return lines


def test_run_for_people_prints_the_same_in_both_modes(
        api_server: ApiServer, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    t = tenant()
    local = invoke(capsys, ["run", str(PLANS / "diamond.json")],
                   {"DVT_STORE_URL": api_server.store_url, "DVT_TENANT": t,
                    "DVT_ENGINE": "reference", "DVT_HOME": str(tmp_path)})
    remote = invoke(capsys, ["run", str(PLANS / "diamond.json")],
                    {"DVT_API_URL": api_server.base_url,
                     "DVT_API_KEY": api_server.key(tenant(), *ROLES)})
    assert (local.code, remote.code) == (0, 0), (local, remote)
    assert "started on reference" in remote.stdout
    # The same events (for one engine the order of a diamond's parallel steps may differ)
    # and the same final table.
    assert sorted(_normalised(remote.stdout)) == sorted(_normalised(local.stdout))
    assert _normalised(remote.stdout)[-5:] == _normalised(local.stdout)[-5:]


def test_run_that_fails_exits_1(dvt: Any, tmp_path: Path) -> None:
    plan = _write(tmp_path, [{"stepId": "boom", "kind": "fail",
                              "params": {"code": "BAD_SQL", "retryable": False}}])
    result = dvt("run", plan, "--json")
    assert result.code == 1, result
    doc = result.json()
    assert doc["status"] == "FAILED"
    assert doc["snapshot"]["failure"]["stepId"] == "boom"
    assert doc["snapshot"]["steps"][0]["error"]["code"] == "BAD_SQL"


@pytest.mark.parametrize(("plan", "code"), [
    ("schema-invalid.json", "SCHEMA_VALIDATION_FAILED"),
    ("cycle.json", "PLAN_INVALID"),
    ("unknown-kind.json", "STEP_KIND_UNKNOWN"),
    ("unknown-schema-version.json", "PLAN_SCHEMA_VERSION_UNSUPPORTED"),
    ("capability-reject.json", "CAPABILITY_NOT_SUPPORTED"),
])
def test_refused_plan_exits_2_with_its_code(dvt: Any, plan: str, code: str) -> None:
    assert "retryable" in _error(dvt("run", str(PLANS / plan), "--json"), code)["details"]
    human = dvt("run", str(PLANS / plan))
    assert human.code == 2
    assert f"error {code}:" in human.stderr
    assert "hint: " in human.stderr
    assert human.stdout == ""


def test_missing_plan_file_is_a_usage_error(dvt: Any, tmp_path: Path) -> None:
    for command in ("run", "validate"):
        error = _error(dvt(command, str(tmp_path / "nope.json"), "--json"), "USAGE_ERROR")
        assert error["details"]["path"].endswith("nope.json")
        human = dvt(command, str(tmp_path / "nope.json"))
        assert human.code == 2
        assert "error USAGE_ERROR" in human.stderr
        assert "hint:" in human.stderr


@pytest.mark.parametrize("args", [("status", "a|b"), ("events", "a|b"), ("signal", "a|b", "pause"),
                                  ("run", str(PLANS / "one-step.json"), "--run-id", "a|b")])
def test_a_hostile_run_id_is_refused_before_anything_happens(dvt: Any,
                                                             args: tuple[str, ...]) -> None:
    error = _error(dvt(*args, "--json"), "IDENTIFIER_INVALID")
    assert error["details"]["field"] == "run id"


def test_signal_arguments_are_checked(dvt: Any) -> None:
    _error(dvt("signal", "r", "retry-step", "--json"), "USAGE_ERROR")
    _error(dvt("signal", "r", "pause", "s", "--json"), "USAGE_ERROR")
    missing = _error(dvt("signal", "no-such-run", "pause", "--json"), "RUN_NOT_FOUND")
    assert missing["message"]
    human = dvt("signal", "no-such-run", "cancel")
    assert human.code == 2
    assert "error RUN_NOT_FOUND" in human.stderr


def test_validate_reports_the_same_document(dvt: Any) -> None:
    ok = dvt("validate", str(PLANS / "diamond.json"), "--json")
    assert ok.code == 0, ok
    assert (ok.json()["ok"], ok.json()["engine"], ok.json()["planId"]) == (
        True, "reference", "diamond")
    bad = dvt("validate", str(PLANS / "cycle.json"), "--json")
    assert bad.code == 2
    assert bad.json()["ok"] is False
    assert "PLAN_INVALID" in {i["code"] for i in bad.json()["issues"]}
    human = dvt("validate", str(PLANS / "cycle.json"))
    assert human.code == 2
    assert "cannot run on reference" in human.stdout
    assert "error PLAN_INVALID" in human.stdout


def test_status_events_and_runs_after_a_run(dvt: Any) -> None:
    done = dvt("run", str(PLANS / "linear-chain.json"), "--json", "--run-id", "r-chain",
               "--label", "team:data")
    assert done.code == 0, done
    status = dvt("status", "r-chain", "--json")
    assert status.code == 0
    assert status.json()["snapshotChecksum"] == done.json()["snapshotChecksum"]
    events = dvt("events", "r-chain", "--json").json_lines()
    assert [e["runSeq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["eventType"] == "RunCompleted"
    followed = dvt("events", "r-chain", "-f", "--json").json_lines()
    assert followed == events
    listed = dvt("runs", "--json", "--label", "team:data")
    assert listed.code == 0
    assert [r["runId"] for r in listed.json()["runs"]] == ["r-chain"]
    human = dvt("runs")
    assert "r-chain  COMPLETED" in human.stdout
    missing = _error(dvt("status", "no-such-run", "--json"), "RUN_NOT_FOUND")
    assert missing["message"]


def test_remote_signals_steer_a_run_of_the_service(remote_dvt: Any) -> None:
    started = remote_dvt("run", str(PLANS / "approval.json"), "--detach", "--json",
                         "--run-id", "r-gate")
    assert started.code == 0, started
    waited = remote_dvt("events", "r-gate", "--until", "StepAwaitingApproval", "--json")
    gate = waited.json_lines()[-1]
    assert gate["eventType"] == "StepAwaitingApproval"
    refused = remote_dvt("signal", "r-gate", "approve", "no-such-step")
    assert refused.code == 2
    assert "rejected" in refused.stdout
    assert "STEP_NOT_FOUND" in refused.stdout
    paused = remote_dvt("signal", "r-gate", "pause", "--json")
    assert paused.code == 0, paused
    assert paused.json()["decision"]["accepted"] is True
    assert remote_dvt("events", "r-gate", "--until", "RunPaused").code == 0
    assert remote_dvt("signal", "r-gate", "resume").code == 0
    assert remote_dvt("events", "r-gate", "--until", "RunResumed").code == 0
    approved = remote_dvt("signal", "r-gate", "approve", gate["stepId"])
    assert approved.code == 0, approved
    assert "APPROVE_STEP accepted" in approved.stdout
    tail = remote_dvt("events", "r-gate", "-f").stdout.splitlines()
    assert any(line.endswith("run: RunCompleted") for line in tail), tail
    assert remote_dvt("status", "r-gate", "--json").json()["status"] == "COMPLETED"
    late = remote_dvt("signal", "r-gate", "cancel", "--json")
    assert late.code == 2
    assert late.json()["decision"]["errorCode"] == "RUN_TERMINAL"


def test_remote_custom_signal_completes_a_wait(remote_dvt: Any) -> None:
    plan = PLANS / "v13-signal-during-pause.json"
    started = remote_dvt("run", str(plan), "--detach", "--json", "--run-id", "r-wait")
    assert started.code == 0, started
    waited = remote_dvt("events", "r-wait", "--until", "StepAwaitingApproval", "--json")
    assert waited.json_lines()[-1]["stepId"] == "file-ready"
    invalid = remote_dvt("signal", "r-wait", "file-arrived", "--payload", '{"rows": -1}',
                         "--json")
    assert invalid.code == 2
    assert invalid.json()["decision"]["errorCode"] == "SIGNAL_INVALID_PAYLOAD"
    sent = remote_dvt("signal", "r-wait", "file-arrived", "--payload",
                      '{"path": "s3://exports/x.parquet", "rows": 3}', "--signal-id", "f-1")
    assert sent.code == 0, sent
    assert "CUSTOM accepted" in sent.stdout
    tail = remote_dvt("events", "r-wait", "-f").stdout.splitlines()
    assert any(line.endswith("run: RunCompleted") for line in tail), tail
    status = remote_dvt("status", "r-wait", "--json").json()
    ready = next(s for s in status["snapshot"]["steps"] if s["stepId"] == "file-ready")
    assert ready["output"] == {"path": "s3://exports/x.parquet", "rows": 3}


def test_remote_refusals_keep_the_service_codes(api_server: ApiServer,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    wrong = {"DVT_API_URL": api_server.base_url, "DVT_API_KEY": "dvt_sk_wrong"}
    denied = invoke(capsys, ["status", "r", "--json"], wrong)
    assert _error(denied, "UNAUTHENTICATED")["details"]["hint"]
    reader = {"DVT_API_URL": api_server.base_url, "DVT_API_KEY": api_server.key(tenant(),
                                                                                 "reader")}
    forbidden = invoke(capsys, ["run", str(PLANS / "one-step.json"), "--json"], reader)
    _error(forbidden, "FORBIDDEN")
    down = invoke(capsys, ["--api", "http://127.0.0.1:9", "runs", "--json"],
                  {"DVT_API_KEY": "dvt_sk_x"})
    _error(down, "API_UNAVAILABLE")


def test_events_until_stops_after_the_first_event_of_that_type(dvt: Any) -> None:
    assert dvt("run", str(PLANS / "linear-chain.json"), "--json", "--run-id", "r-until").code == 0
    lines = dvt("events", "r-until", "--until", "StepCompleted", "--json").json_lines()
    assert [e["eventType"] for e in lines].count("StepCompleted") == 1
    assert lines[-1]["eventType"] == "StepCompleted"
    human = dvt("events", "r-until", "--until", "RunCompleted")
    assert human.code == 0
    assert human.stdout.splitlines()[-1].endswith("run: RunCompleted")


def test_runs_filters_by_status_and_plan(dvt: Any, tmp_path: Path) -> None:
    failing = _write(tmp_path, [{"stepId": "boom", "kind": "fail",
                                 "params": {"code": "BAD_SQL", "retryable": False}}])
    assert dvt("run", failing, "--json", "--run-id", "r-bad").code == 1
    assert dvt("run", str(PLANS / "one-step.json"), "--json", "--run-id", "r-good").code == 0
    failed = dvt("runs", "--status", "failed", "--json").json()["runs"]
    assert [r["runId"] for r in failed] == ["r-bad"]
    by_plan = dvt("runs", "--plan", "t", "--json").json()["runs"]
    assert [r["runId"] for r in by_plan] == ["r-bad"]
    newest = dvt("runs", "--limit", "1", "--json").json()["runs"]
    assert [r["runId"] for r in newest] == ["r-good"]
    assert dvt("runs", "--status", "PAUSED").stdout == "no runs\n"


def test_status_dag_draws_the_layers_with_each_state(dvt: Any) -> None:
    assert dvt("run", str(PLANS / "diamond.json"), "--json", "--run-id", "r-dag").code == 0
    doc = dvt("status", "r-dag", "--dag", "--json")
    assert doc.code == 0, doc
    assert set(doc.json()) == RUN_KEYS | {"dag"}
    layers = {s["stepId"]: (s["layer"], s["status"]) for s in doc.json()["dag"]}
    assert layers == {"a": (0, "SUCCESS"), "b": (1, "SUCCESS"), "c": (1, "SUCCESS"),
                      "d": (2, "SUCCESS")}
    drawn = dvt("status", "r-dag", "--dag")
    assert drawn.code == 0, drawn
    text = drawn.stdout
    assert text.splitlines()[0] == "run r-dag  plan diamond@1.0.0  COMPLETED"
    assert text.index("layer 1") < text.index("a     SUCCESS") < text.index("layer 2")
    assert re.search(r"d +SUCCESS +<- b, c", text), text
    assert "\x1b" not in text
    _error(dvt("status", "no-such-run", "--dag", "--json"), "RUN_NOT_FOUND")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Console:
    """The command's display, drawn on a recording console that claims a terminal."""
    return draw_on_terminal(monkeypatch)


def test_run_and_events_follow_show_the_live_display(dvt: Any, terminal: Console) -> None:
    done = dvt("run", str(PLANS / "diamond.json"), "--run-id", "r-live")
    assert done.code == 0, done
    frame = last_frame(terminal, "r-live")
    assert "COMPLETED" in frame.splitlines()[0]
    assert counts_in(frame) == {"done": 4, "running": 0, "awaiting approval": 0, "failed": 0,
                                "waiting": 0}
    assert "checksum " in done.stdout
    followed = dvt("events", "r-live", "-f")
    assert followed.code == 0
    assert followed.stdout == ""  # every line went to the display
    assert "run: RunCompleted" in terminal.export_text(clear=False)
    plain = dvt("events", "r-live", "-f", "--no-live")
    assert plain.stdout.splitlines()[-1].endswith("run: RunCompleted")


def test_status_and_events_for_people_are_the_same_in_both_modes(
        api_server: ApiServer, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    local_env = {"DVT_STORE_URL": api_server.store_url, "DVT_TENANT": tenant(),
                 "DVT_ENGINE": "reference", "DVT_HOME": str(tmp_path)}
    remote_env = {"DVT_API_URL": api_server.base_url,
                  "DVT_API_KEY": api_server.key(tenant(), *ROLES)}
    shown: dict[str, list[Result]] = {}
    for name, env in (("local", local_env), ("remote", remote_env)):
        assert invoke(capsys, ["run", str(PLANS / "linear-chain.json"), "--run-id", "r-same",
                               "--json"], env).code == 0
        shown[name] = [invoke(capsys, args, env) for args in (
            ["status", "r-same"], ["status", "r-same", "--dag"], ["events", "r-same"],
            ["events", "r-same", "-f"], ["runs"], ["runs", "--status", "FAILED"],
            ["signal", "r-gone", "pause"], ["events", "r-gone"])]
    for local, remote in zip(shown["local"], shown["remote"], strict=True):
        assert (local.code, _first_line(local.stderr)) == (remote.code, _first_line(remote.stderr))
        assert _normalised(local.stdout) == _normalised(remote.stdout)
    assert "r-same  COMPLETED   linear-chain@" in shown["remote"][4].stdout


def _first_line(stderr: str) -> str:
    """The error line (hints differ: a store's hint is not a service's)."""
    return stderr.split("\n", 1)[0]


def test_detached_start_of_a_plan_that_needs_approval(dvt: Any, tmp_path: Path) -> None:
    plan = {"metadata": {"planId": "gated", "planVersion": "1", "schemaVersion": "v1.2",
                         "requiresApproval": True},
            "steps": [{"stepId": "hello", "kind": "noop"}]}
    path = tmp_path / "gated.json"
    path.write_text(json.dumps(plan))
    started = dvt("run", str(path), "--detach", "--run-id", "r-gated")
    assert started.code == 0, started
    assert started.stdout.splitlines()[1:] == [
        "the plan requires approval: dvt signal r-gated approve-run (from another shell, "
        "with a lasting store)"]
    doc = dvt("run", str(path), "--detach", "--run-id", "r-gated-2", "--json")
    assert doc.code == 0, doc
    assert set(doc.json()) == RUN_KEYS
    assert (doc.json()["runId"], doc.json()["status"]) == ("r-gated-2", "PENDING")
    assert dvt("status", "r-gated-2", "--json").json()["snapshotChecksum"] == (
        doc.json()["snapshotChecksum"])


def test_remote_events_until_shows_the_gate_that_holds_the_run_up(remote_dvt: Any,
                                                                  terminal: Console) -> None:
    started = remote_dvt("run", str(PLANS / "approval.json"), "--detach", "--run-id", "r-held")
    assert started.code == 0, started
    waited = remote_dvt("events", "r-held", "--until", "StepAwaitingApproval")
    assert waited.code == 0, waited
    frame = last_frame(terminal, "r-held")
    assert counts_in(frame) == {"done": 1, "running": 0, "awaiting approval": 1, "failed": 0,
                                "waiting": 1}
    assert "held up by signoff (awaiting approval for" in frame
    assert remote_dvt("signal", "r-held", "approve", "signoff", "--json").code == 0
    followed = remote_dvt("events", "r-held", "-f")
    assert followed.code == 0
    done = last_frame(terminal, "r-held")
    assert "COMPLETED" in done.splitlines()[0]
    assert counts_in(done)["done"] == 3
    assert "held up by" not in done
