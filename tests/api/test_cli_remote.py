"""`dvt --api URL`: the run commands through a real `dvt serve`, with the output and exit
codes of local mode. Each shared test runs twice: locally (the reference engine in the
command, a PostgreSQL store) and remotely (the service's reference engine on its store)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from api_helpers import ApiServer, tenant
from cli_helpers import PLANS, Result, invoke

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
    assert doc["snapshotChecksum"] == snapshot_checksum(snapshot)
    assert snapshot.step("hello").output == {"greeting": "hello", "n": 1}
    assert len(result.stdout.strip().splitlines()) == 1


def _normalised(text: str) -> list[str]:
    """Lines without what differs between two runs (ids, durations, checksums)."""
    lines = []
    for line in text.splitlines():
        if line.startswith(("duration ", "checksum ")):
            continue
        # Parallel steps may interleave differently in two runs: their runSeq goes too.
        lines.append(re.sub(r"^\[\s*\d+\] ", "", re.sub(r"run \S+ ", "run RUN ", line)))
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
    assert doc["snapshot"]["steps"][0]["error"]["code"] == "BAD_SQL"


@pytest.mark.parametrize(("plan", "code"), [("cycle.json", "PLAN_INVALID"),
                                            ("unknown-kind.json", "STEP_KIND_UNKNOWN")])
def test_refused_plan_exits_2_with_its_code(dvt: Any, plan: str, code: str) -> None:
    _error(dvt("run", str(PLANS / plan), "--json"), code)
    human = dvt("run", str(PLANS / plan))
    assert human.code == 2
    assert f"error {code}:" in human.stderr


def test_validate_reports_the_same_document(dvt: Any) -> None:
    ok = dvt("validate", str(PLANS / "diamond.json"), "--json")
    assert ok.code == 0, ok
    assert (ok.json()["ok"], ok.json()["engine"], ok.json()["planId"]) == (
        True, "reference", "diamond")
    bad = dvt("validate", str(PLANS / "cycle.json"), "--json")
    assert bad.code == 2
    assert "PLAN_INVALID" in {i["code"] for i in bad.json()["issues"]}
    human = dvt("validate", str(PLANS / "cycle.json"))
    assert human.code == 2
    assert "cannot run on reference" in human.stdout


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
