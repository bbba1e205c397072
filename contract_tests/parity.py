"""The parity harness (contract §10): do two engines produce equivalent runs?

:func:`run_parity` drives one scenario (or a plain plan) on two engines, each over its own
store, and compares the results with :func:`compare_runs`. ``dvt parity`` and every adapter's
tests use it. The comparison itself (normalized events, the checks, the diff) lives in
``contract_tests.records`` and is re-exported here, so callers import the harness from one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contract_tests.catalogue import EngineSide, Scenario, as_scenario
from contract_tests.driver import execute_scenario
from contract_tests.records import (
    RUN_STREAM,
    Difference,
    NormalizedEvent,
    ParityReport,
    RunRecord,
    compare_event_logs,
    compare_runs,
    dag_violations,
    distinct_labels,
    normalize_event,
    normalize_events,
    streams,
    unified_diff,
)

__all__ = [
    "RUN_STREAM",
    "Difference",
    "NormalizedEvent",
    "ParityReport",
    "RunRecord",
    "compare_event_logs",
    "compare_runs",
    "dag_violations",
    "distinct_labels",
    "normalize_event",
    "normalize_events",
    "run_parity",
    "streams",
    "unified_diff",
]


async def run_parity(
    scenario: Scenario | Mapping[str, Any] | str,
    side_a: EngineSide,
    side_b: EngineSide,
    *,
    timeout: float | None = None,
) -> ParityReport:
    """Drive one scenario (or a plain plan) on two engines and compare the results.

    ``scenario`` is a Scenario, a scenario or plan document, or a path to either (a plan runs
    with no actions). Each side brings its own engine and store; the runs happen one after the
    other. A scenario refused at start on both sides compares the error codes instead.
    """
    scn = as_scenario(scenario)
    labels = distinct_labels(side_a.label, side_b.label)
    out_a = await execute_scenario(scn, side_a.engine, side_a.store, timeout=timeout)
    out_b = await execute_scenario(scn, side_b.engine, side_b.store, timeout=timeout)
    if out_a.error is not None or out_b.error is not None:
        code_a = out_a.error["code"] if out_a.error else None
        code_b = out_b.error["code"] if out_b.error else None
        report = ParityReport(labels=labels, checksums={
            labels[0]: out_a.checksum, labels[1]: out_b.checksum})
        if code_a != code_b:
            report.differences.append(Difference(
                "error", f"start_run outcome differs: {labels[0]} {code_a or 'started'}, "
                         f"{labels[1]} {code_b or 'started'}"))
        return report
    assert out_a.record is not None
    assert out_b.record is not None
    rec_a = RunRecord(labels[0], out_a.record.snapshot, out_a.record.events,
                      out_a.record.dependencies, out_a.record.needed)
    rec_b = RunRecord(labels[1], out_b.record.snapshot, out_b.record.events,
                      out_b.record.dependencies, out_b.record.needed)
    report = compare_runs(rec_a, rec_b)
    for index, (da, db) in enumerate(zip(out_a.decisions, out_b.decisions, strict=True)):
        if da != db:
            report.differences.append(Difference(
                "decision", f"action {index + 1} was decided differently: "
                            f"{labels[0]} {da}, {labels[1]} {db}"))
    return report
