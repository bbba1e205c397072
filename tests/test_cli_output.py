"""What `dvt` prints: hostile text rendered inert, every stored event shown, useful wording.

Runs here are real runs on the reference engine over the memory store; the commands' bodies
are called with that store instead of opening their own, so a run, its signals and the
commands that show them share one log.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import PLANS, Result, invoke
from hypothesis import given, settings
from hypothesis import strategies as st

from dvt_cli import output as out
from dvt_cli import runs
from dvt_cli.settings import Identity, Settings
from dvt_engine.models.run import EngineRunRef, RunContext
from dvt_engine.models.signals import Actor, Role, SignalRequest, SignalType
from dvt_engine.planning import store_plan
from dvt_engine.plugins import open_engine
from dvt_engine.ports import WorkflowEngine
from dvt_engine.stores.memory import MemoryRunStateStore
from dvt_engine.waiting import wait_for_snapshot

TENANT = "t-out"
# What a terminal would act on: clear screen + cursor home, CR, LF, BEL, a C1 CSI, a
# right-to-left override, a line separator.
HOSTILE = "\x1b[2J\x1b[H\r\n[   9] run: RunCompleted\x07\x9b31m\u202eevil\u2028"
RAW = ("\x1b", "\r", "\x07", "\x9b", "\u202e", "\u2028")
ACTOR = "eve\u202e"  # a valid identifier (no Cc character), still a bidi override


def _inert(text: str) -> None:
    for ch in RAW:
        assert ch not in text, repr(text)


# --- the rendering function -----------------------------------------------------------------


def test_safe_escapes_controls_and_bidi_visibly() -> None:
    assert out.safe("a\x1bb\rc\nd\x07e\u202ef") == "a\\x1bb\\rc\\nd\\x07e\\u202ef"
    assert out.safe("\ud800") == "\\ud800"
    assert out.safe("plain ünïcode ✓ 日本") == "plain ünïcode ✓ 日本"
    assert out.safe(42) == "42"


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec=None)))
def test_safe_output_is_always_printable(text: str) -> None:
    shown = out.safe(text)
    assert shown.isprintable()
    if text.isprintable():
        assert shown == text


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(st.characters(codec=None))),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(st.characters(codec=None)), inner,
                                            max_size=3)),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_json_output_is_printable_one_line_and_round_trips(value: Any) -> None:
    text = out.dumps(value)
    assert text.isprintable()
    assert "\n" not in text
    assert json.loads(text) == value


# --- a run with hostile text, shown by the commands -----------------------------------------


async def _hostile_run(store: MemoryRunStateStore, plan_dir: Path) -> str:
    plan = {"metadata": {"planId": "hostile", "planVersion": "1", "schemaVersion": "v1.2"},
            "steps": [{"stepId": "say", "kind": "echo", "params": {"text": HOSTILE}},
                      {"stepId": "gate", "kind": "approval", "dependsOn": ["say"]}]}
    engine = open_engine("reference", store=store)
    try:
        ref = await store_plan(store, json.dumps(plan).encode())
        context = RunContext(tenant_id=TENANT, project_id="p", environment_id="e", run_id="r1")
        run_ref = await engine.start_run(ref, context)
        await wait_for_snapshot(store, TENANT, "r1",
                                lambda s: s.step("gate").substatus == "AWAITING_APPROVAL")
        await _signal(engine, run_ref, "s1", SignalType.CANCEL, {"reason": HOSTILE})
        await wait_for_snapshot(store, TENANT, "r1", lambda s: s.status.is_terminal)
        # Decided after the end: SignalRejected follows RunCancelled in the log.
        late = await _signal(engine, run_ref, "s2", SignalType.PAUSE, {"reason": HOSTILE})
        assert not late.accepted
    finally:
        await engine.close()
    return "r1"


async def _signal(engine: WorkflowEngine, run_ref: EngineRunRef, signal_id: str,
                  kind: SignalType, payload: dict[str, Any]) -> Any:
    return await engine.signal(run_ref, SignalRequest(
        signal_id=signal_id, type=kind, tenant_id=TENANT, run_id="r1", payload=payload,
        actor=Actor(id=ACTOR, roles=(Role.ADMIN,))))


class TruncatedFirstRead(MemoryRunStateStore):
    """A memory store whose first fetch_events sees only the first ``visible`` events: the
    command reads while the run is still going and must follow the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.visible: int | None = None

    async def fetch_events(self, tenant_id: str, run_id: str, *, after_seq: int = 0,
                           limit: int | None = None) -> Any:
        events = await super().fetch_events(tenant_id, run_id, after_seq=after_seq, limit=limit)
        if self.visible is not None and after_seq == 0:
            events, self.visible = events[: self.visible], None
        return events


@pytest.fixture
def use_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Make the command bodies work on a given store (and see no dev setup)."""
    monkeypatch.setenv("DVT_HOME", str(tmp_path / "home"))

    def use(store: MemoryRunStateStore) -> None:
        @contextlib.asynccontextmanager
        async def session(settings: Settings, **_: Any) -> AsyncIterator[MemoryRunStateStore]:
            yield store

        monkeypatch.setattr(runs, "store_session", session)

    return use


def _settings(as_json: bool = False) -> Settings:
    return Settings(store_url="memory://", identity=Identity(tenant=TENANT), json=as_json)


@pytest.mark.parametrize("follow", [False, True])
async def test_events_show_every_stored_event_rendered_inert(
    use_store: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], follow: bool
) -> None:
    store = TruncatedFirstRead()
    run_id = await _hostile_run(store, tmp_path)
    stored = await store.fetch_events(TENANT, run_id, after_seq=0)
    store.visible = 3 if follow else None
    snapshot = await store.get_snapshot(TENANT, run_id)
    assert snapshot is not None
    assert stored[-1].event_type == "SignalRejected"
    assert stored[-1].run_seq == snapshot.last_event_seq
    use_store(store)
    capsys.readouterr()

    assert await runs.show_events(_settings(), run_id, follow) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(stored)
    assert [int(line[1:5]) for line in lines] == [e.run_seq for e in stored]
    assert "SignalRejected PAUSE by eve\\u202e (RUN_TERMINAL)" in lines[-1]
    cancelled = next(line for line in lines if "RunCancelled" in line)
    assert "\\x1b[2J\\x1b[H\\r\\n[   9] run: RunCompleted\\x07\\x9b31m\\u202eevil\\u2028" in (
        cancelled)
    _inert("\n".join(lines))

    store.visible = 3 if follow else None
    assert await runs.show_events(_settings(as_json=True), run_id, follow) == 0
    text = capsys.readouterr().out
    _inert(text)
    documents = [json.loads(line) for line in text.splitlines()]
    assert [d["runSeq"] for d in documents] == [e.run_seq for e in stored]
    assert documents[-1]["payload"]["actor"]["id"] == ACTOR


async def test_status_renders_hostile_text_inert(
    use_store: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = MemoryRunStateStore()
    run_id = await _hostile_run(store, tmp_path)
    use_store(store)
    capsys.readouterr()
    assert await runs.show_status(_settings(), run_id) == 0
    shown = capsys.readouterr().out
    _inert(shown)
    assert "CANCELLED" in shown
    assert await runs.show_status(_settings(as_json=True), run_id) == 0
    _inert(capsys.readouterr().out)


async def test_until_stops_at_the_first_event_of_its_type(
    use_store: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = MemoryRunStateStore()
    run_id = await _hostile_run(store, tmp_path)
    use_store(store)
    capsys.readouterr()
    assert await runs.show_events(_settings(), run_id, False, "StepCompleted") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "StepCompleted" in lines[-1]
    assert not any("RunCancelled" in line for line in lines)


# --- the command line ------------------------------------------------------------------------


@pytest.fixture
def dvt(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Any:
    def call(*args: str, **env: str) -> Result:
        base = {"DVT_HOME": str(tmp_path / "home"), "DVT_ENGINE": "reference"}
        return invoke(capsys, list(args), {**base, **env})

    return call


@pytest.mark.parametrize(("option", "value", "field"), [
    ("--signal-id", "bad\x1bid", "signal id"),
    ("--signal-id", "a|b", "signal id"),
    ("--actor", "eve\x1b", "actor"),
    ("--actor", "", "actor"),
])  # fmt: skip
def test_signal_options_are_checked_at_the_edge(dvt: Any, option: str, value: str,
                                                field: str) -> None:
    result = dvt("signal", "some-run", "pause", option, value, "--json")
    assert result.code == 2, result
    error = result.json()["error"]
    assert error["code"] == "IDENTIFIER_INVALID"
    assert error["details"]["field"] == field
    if value:
        assert value not in json.dumps(error, ensure_ascii=False)
    people = dvt("signal", "some-run", "pause", option, value)
    assert people.code == 2
    assert "error IDENTIFIER_INVALID" in people.stderr
    assert "bug in dvt" not in people.stderr
    _inert(people.stderr)


def test_hostile_run_id_is_refused_and_not_echoed(dvt: Any) -> None:
    for command in ("status", "events"):
        result = dvt(command, "r\x1b[2J", "--json")
        assert result.code == 2, result
        error = result.json()["error"]
        assert error["code"] == "IDENTIFIER_INVALID"
        assert "\x1b" not in json.dumps(error, ensure_ascii=False)


def test_a_non_json_plan_is_named_by_its_file(dvt: Any, tmp_path: Path) -> None:
    plan = tmp_path / "notes.txt"
    plan.write_text("not a plan {")
    checked = dvt("validate", str(plan))
    assert checked.code == 2
    assert "?@?" not in checked.stdout
    assert f"plan file {plan}" in checked.stdout
    ran = dvt("run", str(plan))
    assert ran.code == 2
    assert "details.errors" not in ran.stderr
    assert f"hint: `dvt validate {plan}`" in ran.stderr
    as_json = dvt("run", str(plan), "--json").json()["error"]
    assert as_json["code"] == "SCHEMA_VALIDATION_FAILED"
    assert as_json["details"]["errors"]


def test_schema_errors_list_their_paths_for_people(dvt: Any) -> None:
    ran = dvt("run", str(PLANS / "schema-invalid.json"))
    assert ran.code == 2
    assert "  at /steps/0: " in ran.stderr
    assert "details.errors" not in ran.stderr
