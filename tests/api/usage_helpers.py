"""Helpers of the usage tests: a costHint-only plan, runs followed to their end, a window."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from api_helpers import sse_messages

from dvt_engine.builder import PlanBuilder


def hinted_plan() -> dict[str, Any]:
    """Two noop steps with costHints 2 and 3.5: a run costs 1 + 2 + 3.5 units."""
    return (PlanBuilder("hinted", "1").step("a", "noop", cost_units=2)
            .step("b", "noop", depends_on=["a"], cost_units=3.5).build())


def metric(c: httpx.Client, name: str, **labels: str) -> float:
    """The value of one metric series of the service (0 when absent)."""
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def window() -> dict[str, str]:
    """Query dates around today (a day either side, so a run near midnight is inside)."""
    today = datetime.now(UTC).date()
    return {"from": (today - timedelta(days=1)).isoformat(),
            "to": (today + timedelta(days=2)).isoformat()}


def run_to_the_end(c: httpx.Client, run_id: str) -> None:
    """Start a hinted run and follow the tenant's stream until it completes (no polling)."""
    started = c.post("/v1/runs", json={"plan": hinted_plan(), "runId": run_id})
    assert started.status_code == 201, started.text
    with c.stream("GET", "/v1/stream", params={"after": "0"}) as s:
        for message in sse_messages(s.iter_lines()):
            data = json.loads(message.data) if message.data else {}
            if message.event == "RunCompleted" and data.get("runId") == run_id:
                return
    raise AssertionError(f"{run_id} never completed")
