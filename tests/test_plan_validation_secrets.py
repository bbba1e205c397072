"""Secret literals in params are refused (PLAN_SECRET_LITERAL) wherever a plan enters dvt.

The refusal names JSON Pointers and rules, never the value; references
(``{"secretRef": "env:NAME"}``) are the accepted way to pass a secret.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Result, invoke
from secret_helpers import assert_no_secrets

from dvt_engine.engines.reference import ReferenceEngine
from dvt_engine.errors import DvtError, ErrorCode, PlanSecretLiteral
from dvt_engine.models.plan import PlanRef
from dvt_engine.models.run import RunContext
from dvt_engine.planning.capabilities import ENGINE_CAPABILITIES
from dvt_engine.planning.fetch import PlanLoader, store_plan
from dvt_engine.planning.validation import (
    build_validation_report,
    raise_for_report,
    validate_plan_document,
)
from dvt_engine.stores.memory import MemoryRunStateStore

PASSWORD = "hunter2-Correct-Horse"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
BEARER = "Bearer 4f9c2a7e1b3d5f60a8c9e2d4b6f8a0c1"
FOUR = (PASSWORD, AWS_KEY_ID, AWS_SECRET, BEARER)
FOUR_PATHS = [
    "/steps/0/params/password",
    "/steps/0/params/aws_access_key_id",
    "/steps/0/params/aws_secret_access_key",
    "/steps/0/params/authorization",
]


def plan_with(step_params: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "metadata": {"planId": "creds", "planVersion": "1", "schemaVersion": "v1.2"},
        "steps": [{"stepId": "show", "kind": "echo", "params": step_params}],
        **top,
    }


FOUR_SECRETS = plan_with(
    {
        "password": PASSWORD,
        "aws_access_key_id": AWS_KEY_ID,
        "aws_secret_access_key": AWS_SECRET,
        "authorization": BEARER,
    }
)
WITH_REFS = plan_with(
    {
        "password": {"secretRef": "env:DB_PASSWORD"},
        "aws": {"secretRef": "vault:aws/secret_access_key"},
        "note": "rows for 2026-11-21",
    }
)


def expect_secret_error(data: Any) -> DvtError:
    with pytest.raises(PlanSecretLiteral) as info:
        validate_plan_document(data)
    return info.value


def test_the_four_secret_echo_plan_is_refused_naming_paths_not_values() -> None:
    err = expect_secret_error(json.dumps(FOUR_SECRETS))
    assert err.code is ErrorCode.PLAN_SECRET_LITERAL
    assert err.retryable is False
    assert err.details["path"] == FOUR_PATHS[0]
    assert err.details["paths"] == FOUR_PATHS
    assert "secretRef" in err.message
    assert_no_secrets(err.to_dict(), str(err), known=FOUR)


def test_the_report_lists_each_secret_and_raises_the_same_code() -> None:
    report = build_validation_report(
        json.dumps(FOUR_SECRETS),
        engine="reference",
        capabilities=ENGINE_CAPABILITIES["reference"],
        known_kinds={"echo"},
    )
    assert not report.ok
    secret_issues = [i for i in report.errors if i.code == "PLAN_SECRET_LITERAL"]
    assert [i.path for i in secret_issues] == FOUR_PATHS
    assert {i.step_id for i in secret_issues} == {"show"}
    assert_no_secrets(report.model_dump_json(), known=FOUR)
    with pytest.raises(PlanSecretLiteral) as info:
        raise_for_report(report)
    assert info.value.details["paths"] == FOUR_PATHS


def test_secret_references_are_accepted() -> None:
    plan = validate_plan_document(json.dumps(WITH_REFS))
    assert plan.steps[0].params["password"] == {"secretRef": "env:DB_PASSWORD"}


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (plan_with({}, params={"apiKey": "k-1234"}), "/params/apiKey"),
        (plan_with({"dsn": "postgres://u:pw@h/db"}), "/steps/0/params/dsn"),
        (plan_with({"cfg": {"keys": [AWS_KEY_ID]}}), "/steps/0/params/cfg/keys/0"),
        (plan_with({"client_secret": ["a", "b"]}), "/steps/0/params/client_secret/0"),
        (plan_with({"tls": "-----BEGIN PRIVATE KEY-----\nMII"}), "/steps/0/params/tls"),
    ],
)
def test_plan_params_nested_values_and_lists_are_checked(doc: dict[str, Any], path: str) -> None:
    assert expect_secret_error(doc).details["path"] == path


def test_innocent_params_pass() -> None:
    doc = plan_with(
        {"tokenizer": "bert", "max_tokens": 512, "passwordRef": "vault:db", "token": "",
         "select": "orders", "url": "https://example.com/a?b=c", "sha": "0" * 40}
    )  # fmt: skip
    validate_plan_document(doc)


def test_schema_and_dag_errors_still_come_first() -> None:
    cyclic = plan_with({"password": PASSWORD})
    cyclic["steps"][0]["dependsOn"] = ["show"]
    with pytest.raises(DvtError) as info:
        validate_plan_document(cyclic)
    assert info.value.code is ErrorCode.PLAN_INVALID


# --- where plans enter: store_plan, start_run, the CLI ---


async def test_store_plan_refuses_and_stores_nothing() -> None:
    store = MemoryRunStateStore()
    raw = json.dumps(FOUR_SECRETS).encode()
    with pytest.raises(PlanSecretLiteral):
        await store_plan(store, raw)
    assert await store.get_plan(hashlib.sha256(raw).hexdigest()) is None


async def test_start_run_refuses_a_stored_plan_with_secrets_and_registers_nothing() -> None:
    store = MemoryRunStateStore()
    raw = json.dumps(FOUR_SECRETS).encode()
    uri = await store.put_plan(raw)  # as written by an older dvt, before this check
    ref = PlanRef(uri=uri, sha256=hashlib.sha256(raw).hexdigest(), schema_version="v1.2",
                  plan_id="creds", plan_version="1")  # fmt: skip
    engine = ReferenceEngine(store)
    try:
        with pytest.raises(PlanSecretLiteral) as info:
            await engine.start_run(
                ref, RunContext(tenant_id="t", project_id="p", environment_id="e", run_id="r1")
            )
    finally:
        await engine.close()
    assert info.value.details["paths"] == FOUR_PATHS
    assert await store.get_run("t", "r1") is None
    assert await store.list_runs("t") == []
    with pytest.raises(PlanSecretLiteral):
        await PlanLoader(store).load(ref)


@pytest.fixture
def dvt(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Any:
    def call(*args: str) -> Result:
        env = {"DVT_HOME": str(tmp_path / "home"), "DVT_ENGINE": "reference"}
        return invoke(capsys, list(args), env)

    return call


def test_dvt_validate_and_run_refuse_the_plan_without_printing_a_secret(
    dvt: Any, tmp_path: Path
) -> None:
    plan = tmp_path / "creds.json"
    plan.write_text(json.dumps(FOUR_SECRETS))
    validated = dvt("validate", str(plan), "--json")
    assert validated.code == 2, validated
    report = validated.json()
    assert [i["path"] for i in report["issues"] if i["code"] == "PLAN_SECRET_LITERAL"] == (
        FOUR_PATHS
    )
    human = dvt("validate", str(plan))
    assert human.code == 2
    assert "PLAN_SECRET_LITERAL" in human.stdout
    ran = dvt("run", str(plan), "--json")
    assert ran.code == 2, ran
    assert ran.json()["error"]["code"] == "PLAN_SECRET_LITERAL"
    for result in (validated, human, ran):
        assert_no_secrets(result.stdout, result.stderr, known=FOUR)


def test_dvt_runs_a_plan_with_references(dvt: Any, tmp_path: Path) -> None:
    plan = tmp_path / "refs.json"
    plan.write_text(json.dumps(WITH_REFS))
    ran = dvt("run", str(plan), "--json")
    assert ran.code == 0, ran
    output = ran.json()["snapshot"]["steps"][0]["output"]
    assert output["password"] == {"secretRef": "env:DB_PASSWORD"}
    assert_no_secrets(ran.stdout)
