"""PlanBuilder writes the same plan a person writes: golden plans rebuilt byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dvt_engine import PlanBuilder, PlanError, RetryPolicy
from dvt_engine.planning.fetch import encode_plan

PLANS = Path(__file__).resolve().parent.parent / "golden_fixtures" / "plans"


def _retry() -> RetryPolicy:
    return RetryPolicy(max_attempts=3, initial_interval_ms=1, backoff_coefficient=2.0,
                       max_interval_ms=4)


BUILT = {
    "one-step": PlanBuilder("one-step", "1.0.0", description="a single echo step")
    .step("hello", "echo", params={"greeting": "hello", "n": 1}),
    "linear-chain": PlanBuilder("linear-chain", "1.0.0",
                                description="four steps, each after the previous one",
                                params={"date": "2026-11-21"})
    .step("extract", "noop")
    .step("transform", "echo", depends_on=["extract"], params={"table": "orders"})
    .step("load", "echo", depends_on=["transform"], params={"rows": 42}, cost_units=2)
    .step("publish", "noop", depends_on=["load"]),
    "diamond": PlanBuilder("diamond", "1.0.0", description="a, then b and c in parallel, then d")
    .step("a", "noop")
    .step("b", "echo", depends_on=["a"], params={"side": "left"})
    .step("c", "echo", depends_on=["a"], params={"side": "right"})
    .step("d", "noop", depends_on=["b", "c"]),
    "flaky-third-attempt": PlanBuilder(
        "flaky-third-attempt", "1.0.0",
        description="fails two engine attempts, succeeds on the third")
    .step("flaky", "fail", params={"code": "FLAKY", "failTimes": 2, "retryable": True},
          retry=_retry())
    .step("after", "noop", depends_on=["flaky"]),
    "non-retryable-code": PlanBuilder(
        "non-retryable-code", "1.0.0",
        description="an error code listed as not retryable stops engine retries at once")
    .step("query", "fail", params={"code": "BAD_SQL", "failTimes": 1, "retryable": True},
          retry={"maxAttempts": 3, "initialIntervalMs": 1, "backoffCoefficient": 2.0,
                 "maxIntervalMs": 4, "nonRetryableErrorCodes": ["BAD_SQL"]})
    .step("after", "noop", depends_on=["query"]),
    "step-timeout": PlanBuilder("step-timeout", "1.0.0",
                                description="a sleep step that outlives its timeoutMs")
    .step("slow", "sleep", params={"ms": 30000}, timeout_ms=50)
    .step("after", "noop", depends_on=["slow"]),
    "approval-timeout": PlanBuilder(
        "approval-timeout", "1.0.0",
        description="an approval gate nobody answers within its timeout")
    .approval("signoff", timeout_ms=50)
    .step("publish", "noop", depends_on=["signoff"]),
    "await-operator-retry": PlanBuilder(
        "await-operator-retry", "1.0.0", failure_policy="awaitOperator",
        description="a gate rejected on its first logical attempt, an independent branch, "
                    "then the rest")
    .step("a", "noop")
    .approval("review", depends_on=["a"])
    .step("side", "echo", depends_on=["a"], params={"independent": True})
    .step("c", "noop", depends_on=["review"]),
    "capability-degrade": PlanBuilder(
        "capability-degrade", "1.0.0", fallback_behavior="degrade",
        requires_capabilities=["workflow.gpu.scheduling"],
        description="requires a capability no engine has; fallbackBehavior degrade")
    .step("a", "noop")
    .step("b", "echo", depends_on=["a"], params={"fallback": "degrade"}),
}


@pytest.mark.parametrize("name", sorted(BUILT))
def test_builder_rebuilds_golden_plan_byte_for_byte(name: str) -> None:
    raw = (PLANS / f"{name}.json").read_bytes()
    builder = BUILT[name]
    assert builder.to_json().encode() == raw
    # The stored bytes, and so the plan digest, equal those of the hand-written document.
    stored = encode_plan(json.loads(raw))
    assert builder.to_bytes() == stored
    assert hashlib.sha256(encode_plan(builder.build())).hexdigest() == \
        hashlib.sha256(stored).hexdigest()


def test_build_validates_the_dag() -> None:
    with pytest.raises(PlanError) as err:
        PlanBuilder("p", "1").step("a", "noop", depends_on=["missing"]).build()
    assert err.value.code in ("PLAN_INVALID", "SCHEMA_VALIDATION_FAILED")
    with pytest.raises(PlanError):
        PlanBuilder("p", "1").step("a", "noop").step("a", "echo").build()
    with pytest.raises(PlanError):
        PlanBuilder("p", "1").build()  # a plan needs a step


def test_build_returns_an_independent_document() -> None:
    params = {"select": ["orders"]}
    builder = PlanBuilder("p", "1").step("a", "echo", params=params)
    doc = builder.build()
    params["select"].append("customers")
    doc["steps"][0]["params"]["select"].append("x")
    assert builder.build()["steps"][0]["params"] == {"select": ["orders"]}
