"""dvt's data converter: the SDK's bytes, and the same records back as the SDK's own decoding."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.converter import DataConverter

from dvt_adapters_temporal.converter import DATA_CONVERTER, WIRE_TYPES
from dvt_adapters_temporal.wire import (
    Cursor,
    GateInput,
    Prepared,
    PrepareInput,
    RunEventInput,
    RunInput,
    RunResult,
    SignalMessage,
    StepInput,
    StepOutcome,
    WorkflowConfig,
)

CONFIG = WorkflowConfig("q", {"spark.submit": "spark"}, 7, 2_000_000, True, 2.5, 60.0)
SAMPLES: list[Any] = [
    CONFIG,
    Cursor(3, {"steps": {"a": "SUCCESS"}}, [["b", 2]], [["g", 1]], [["t", 99]], ["s1"], 12),
    RunInput({"uri": "mem://p"}, {"runId": "r"}, {"workflowId": "w"}, CONFIG,
             Cursor(1, {}, [], [], [], [], 0)),
    RunInput({"uri": "mem://p"}, {"runId": "r"}, {}, WorkflowConfig("q")),
    RunResult("r", "FAILED", "s", "STEP_FAILED", 4),
    SignalMessage("sig", "RETRY_STEP", {"stepId": "s"}, "op", "operator", 5, 4, 2),
    PrepareInput({"uri": "mem://p"}, {"runId": "r"}, {}, True),
    Prepared({"steps": [{"stepId": "a", "params": {"x": [1, 2.5, None]}}]}, None, None),
    StepInput({"step": {"stepId": "a", "kind": "noop"}, "logicalAttemptId": 2}),
    StepOutcome("failed", "STEP_FAILED", "boom", True),
    StepOutcome("succeeded"),
    RunEventInput({"runId": "r"}, {}, "RunPaused", {"x": 1}, 2, "s", 3, "sig", True),
    GateInput({"step": {}}, "approve", "alice", "ok", "sig", None),
]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_same_bytes_and_same_record_as_the_sdk(value: Any) -> None:
    ours, sdk = DATA_CONVERTER.payload_converter, DataConverter.default.payload_converter
    payloads = ours.to_payloads([value])
    assert payloads == sdk.to_payloads([value])
    (back,) = ours.from_payloads(payloads, [type(value)])
    assert back == value
    assert back == sdk.from_payloads(payloads, [type(value)])[0]


def test_missing_fields_take_their_defaults_and_unknown_ones_are_ignored() -> None:
    # A record written by an older or newer dvt: fields added later, or since dropped.
    sdk = DataConverter.default.payload_converter
    payloads = sdk.to_payloads([{"status": "succeeded", "later": 1}])
    (back,) = DATA_CONVERTER.payload_converter.from_payloads(payloads, [StepOutcome])
    assert back == StepOutcome("succeeded")
    assert back == sdk.from_payloads(payloads, [StepOutcome])[0]


def test_other_types_take_the_sdk_path() -> None:
    conv = DATA_CONVERTER.payload_converter
    payloads = conv.to_payloads([{"a": [1, 2]}, 3, None])
    assert conv.from_payloads(payloads, [dict[str, list[int]], int, type(None)]) == [
        {"a": [1, 2]}, 3, None]


def test_every_wire_record_is_covered() -> None:
    from dataclasses import is_dataclass

    from dvt_adapters_temporal import wire

    records = {v for v in vars(wire).values() if isinstance(v, type) and is_dataclass(v)}
    # WorkflowInput never crosses the wire: it lives inside the workflow only.
    assert records - {wire.WorkflowInput} == set(WIRE_TYPES)
