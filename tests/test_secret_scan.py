"""The secret rule table: detection, redaction, the event-path defence and the CI scanner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from secret_helpers import assert_no_secrets, secret_findings

from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.eventlog import EventFactory, RunWriter
from dvt_engine.idempotency import run_request_key
from dvt_engine.models.run import RunContext, RunHeader
from dvt_engine.planning.fetch import PlanLoader, store_plan
from dvt_engine.ports import StepContext
from dvt_engine.secret_scan import (
    REDACTED,
    find_secrets,
    key_looks_secret,
    main,
    redact_secrets,
    redact_text,
    text_secret_rule,
)
from dvt_engine.steps import StepInvocation, StepRunner, builtin_registry
from dvt_engine.stores.memory import MemoryRunStateStore

AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk"
BEARER = "Bearer 4f9c2a7e1b3d5f60a8c9e2d4b6f8a0c1"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
URL = "postgres://loader:s3cr3t-pw@db.example.com:5432/dw"

SAMPLES = {
    "AWS access key id": AWS_KEY_ID,
    "AWS secret access key": AWS_SECRET,
    "JWT": JWT,
    "bearer token": BEARER,
    "private key": PEM,
    "password in URL": URL,
    "GitHub token": "ghp_" + "a1B2" * 9,
    "Slack token": "xoxb-1234567890-abcdefghij",
    "Google API key": "AIza" + "Sy0123456789abcdefghijABCDEFGHIJ_-x",
    "Stripe key": "sk_live_" + "0123456789abcdefABCD",
}


@pytest.mark.parametrize(("rule", "text"), SAMPLES.items())
def test_each_value_rule_finds_its_shape_alone_and_inside_text(rule: str, text: str) -> None:
    assert text_secret_rule(text) == rule
    assert text_secret_rule(f"connecting with {text} now") is not None
    redacted = redact_text(f"connecting with {text} now")
    assert text_secret_rule(redacted) is None
    assert REDACTED in redacted
    assert redacted.startswith("connecting with ")


@pytest.mark.parametrize(
    "text",
    [
        "orders",
        "select * from orders where id = 4",
        "a" * 40,  # one case only: not an AWS secret
        "0123456789abcdef0123456789abcdef01234567",  # a git sha: hex, lower case
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # a sha256
        "https://plans.example.com/p.json",
        "vault:db/password",
        "bearer",
        "the Bearer of news",
        "AKIA-not-a-key",
    ],
)
def test_ordinary_values_are_not_secrets(text: str) -> None:
    assert text_secret_rule(text) is None
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True), ("dbPassword", True), ("DB_PASSWORD", True), ("passwd", True),
        ("secret", True), ("client_secret", True), ("apiKey", True), ("APIKey", True),
        ("api-key", True), ("x-api-key", True), ("token", True), ("accessToken", True),
        ("aws_secret_access_key", True), ("privateKey", True), ("credentials", True),
        ("secretRef", False), ("passwordRef", False), ("tokenUrl", False),
        ("secretName", False), ("tokenizer", False), ("max_tokens", False),
        ("aws_access_key_id", False), ("keyspace", False), ("select", False), ("", False),
    ],
)  # fmt: skip
def test_key_names(key: str, secret: bool) -> None:
    assert key_looks_secret(key) is secret


def test_find_secrets_names_pointers_and_rules_never_values() -> None:
    params = {
        "password": "hunter2-Correct",
        "nested": {"urls": [URL], "a/b": {"token": ["t1", "t2"]}},
        "db": {"password": {"secretRef": "env:DB_PASSWORD"}},
        "empty": {"password": ""},
        "count": {"token": 3},
    }
    findings = find_secrets(params, ("steps", 0, "params"))
    assert [(f.path, f.rule) for f in findings] == [
        ("/steps/0/params/password", "key named 'password'"),
        ("/steps/0/params/nested/urls/0", "password in URL"),
        ("/steps/0/params/nested/a~1b/token/0", "key named 'token'"),
        ("/steps/0/params/nested/a~1b/token/1", "key named 'token'"),
    ]
    assert "hunter2" not in repr(findings)
    assert "s3cr3t" not in repr(findings)


def test_redact_secrets_masks_values_keeps_shape_and_references() -> None:
    payload = {
        "output": {
            "password": "hunter2-Correct",
            "keys": [AWS_KEY_ID, "fine"],
            "header": BEARER,
            "dsn": URL,
            "ref": {"secretRef": "env:DB_PASSWORD"},
            "rows": 3,
            "ok": True,
        }
    }
    redacted = redact_secrets(payload)
    assert redacted == {
        "output": {
            "password": REDACTED,
            "keys": [REDACTED, "fine"],
            "header": "Bearer ***",
            "dsn": "postgres://loader:***@db.example.com:5432/dw",
            "ref": {"secretRef": "env:DB_PASSWORD"},
            "rows": 3,
            "ok": True,
        }
    }
    assert payload["output"]["password"] == "hunter2-Correct"  # the input is not changed
    assert find_secrets(redacted) == []


@dataclass(frozen=True)
class Who:
    """A RunIdentity."""

    tenant_id: str
    project_id: str
    environment_id: str
    run_id: str
    plan_id: str
    plan_version: str


def test_event_factory_redacts_payloads() -> None:
    who = Who(tenant_id="t", project_id="p", environment_id="e", run_id="r",
              plan_id="plan", plan_version="1")  # fmt: skip
    factory = EventFactory(who, "engine", clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    event = factory.step_event(
        "StepCompleted", "s", {"output": {"apiKey": "k-123456", "note": f"used {AWS_KEY_ID}"}}
    )
    assert event.payload == {"output": {"apiKey": REDACTED, "note": f"used {REDACTED}"}}
    assert_no_secrets(event, known=["k-123456", AWS_KEY_ID])


def test_the_scan_helper_finds_patterns_and_planted_values() -> None:
    assert secret_findings({"x": {"password": "p"}}) == ["/x/password: key named 'password'"]
    assert secret_findings("line one\nAuthorization: " + BEARER) == ["line 2: bearer token"]
    assert secret_findings({"note": "plain-but-planted"}, known=["plain-but-planted"]) == [
        "known secret #0"
    ]
    with pytest.raises(AssertionError, match="value #1"):
        assert_no_secrets({"fine": 1}, {"token": "abc"})


def test_the_ci_scanner_exits_1_on_a_finding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = tmp_path / "clean.log"
    clean.write_text("run r-1 COMPLETED\n")
    dirty = tmp_path / "dirty.log"
    dirty.write_text(f"ok\nkey {AWS_KEY_ID}\n")
    assert main([str(clean)]) == 0
    assert main([str(clean), str(dirty)]) == 1
    out = capsys.readouterr().out
    assert out == f"{dirty}:2: AWS access key id\n"


# --- the property: redaction never leaves anything a rule matches ---

_pieces = st.sampled_from(
    [*"abcXYZ019/+=-_.:@ \n*", "AKIA", "eyJ", "Bearer ", "://", "-----BEGIN", "ghp_"]
)
_fragments = st.one_of(
    st.sampled_from(list(SAMPLES.values())),
    st.lists(_pieces, max_size=30).map("".join),
    st.text(max_size=10),
)
_texts = st.lists(_fragments, max_size=6).map("".join)
_keys = st.one_of(
    st.sampled_from(["password", "token", "apiKey", "secretRef", "note", "rows"]),
    st.text(max_size=8),
)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _texts),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_texts)
def test_redacted_text_never_matches_a_rule(text: str) -> None:
    assert text_secret_rule(redact_text(text)) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_redacted_values_never_hold_a_finding(value: Any) -> None:
    redacted = redact_secrets(value)
    assert find_secrets(redacted) == []
    json.dumps(redacted)
    assert redact_secrets(redacted) == redacted  # idempotent


# --- end to end: a handler that returns a credential ---


async def test_a_leaked_credential_reaches_no_event_snapshot_or_outcome() -> None:
    async def leaky(ctx: StepContext) -> Any:
        # Not a plan literal (those are refused): a value the handler obtained at run time.
        return {"accessToken": "tok-123456789", "log": f"used key {AWS_KEY_ID} with {BEARER}"}

    async def failing(ctx: StepContext) -> Any:
        raise RuntimeError(f"cannot connect to {URL}")

    registry = builtin_registry()
    registry.register("leaky", leaky)
    registry.register("failing", failing)
    store = MemoryRunStateStore()
    plan = {
        "metadata": {"planId": "leak", "planVersion": "1", "schemaVersion": "v1.2"},
        "steps": [
            {"stepId": "a", "kind": "leaky"},
            {"stepId": "b", "kind": "failing", "retry": {"maxAttempts": 1}},
        ],
    }
    ref = await store_plan(store, plan)
    engine = ReferenceEngine(store, registry=registry)
    context = RunContext(tenant_id="t", project_id="p", environment_id="e", run_id="r1")
    try:
        await engine.start_run(ref, context)
        async for event in store.follow("t", "r1"):
            if event.event_type in ("RunCompleted", "RunFailed"):
                break
    finally:
        await engine.close()
    events = await store.fetch_events("t", "r1")
    snapshot = await store.get_snapshot("t", "r1")
    assert snapshot is not None
    assert snapshot.step("a").output == {
        "accessToken": REDACTED,
        "log": f"used key {REDACTED} with Bearer {REDACTED}",
    }
    assert snapshot.step("b").error is not None
    assert "postgres://loader:***@" in snapshot.step("b").error.message
    planted = ["tok-123456789", AWS_KEY_ID, "4f9c2a7e1b3d5f60a8c9e2d4b6f8a0c1", "s3cr3t-pw"]
    assert_no_secrets(*events, snapshot, known=planted)


async def test_the_runner_reports_what_the_log_recorded() -> None:
    async def leaky(ctx: StepContext) -> Any:
        return {"password": "pw-from-a-vault"}

    registry = builtin_registry()
    registry.register("leaky", leaky)
    store = MemoryRunStateStore()
    doc = {
        "metadata": {"planId": "leak", "planVersion": "1", "schemaVersion": "v1.2"},
        "steps": [{"stepId": "a", "kind": "leaky"}],
    }
    ref = await store_plan(store, doc)
    plan = (await PlanLoader(store).load(ref)).plan
    context = RunContext(tenant_id="t", project_id="p", environment_id="e", run_id="r2")
    header = RunHeader.for_plan(
        plan=plan, plan_ref=ref, context=context, engine="reference",
        run_request_key=run_request_key("t", "p", "e", "leak", "1", "r2"),
        created_at=datetime.now(UTC),
    )  # fmt: skip
    await store.register_run(header)
    await RunWriter(store, header).append(
        EventFactory(header, emitted_by="engine").run_event("RunStarted", {"engine": "reference"})
    )
    invocation = StepInvocation.for_step(header, plan.step("a"), plan_params={},
                                         logical_attempt_id=1, engine_attempt_id=1)  # fmt: skip
    first = await StepRunner(store, registry).run(invocation)
    assert first.duplicate is False
    # The engine hands this outcome on (a Temporal activity result, a Conductor task output):
    # it must say what the log says, masked.
    assert first.output == {"password": REDACTED}
    again = await StepRunner(store, registry).run(invocation)
    assert again.output == first.output
