"""The results table of the store benchmarks: one Row per measured scenario, and its Markdown."""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    subject: str
    count: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""

    @property
    def per_second(self) -> float:
        """Operations per second over the whole scenario."""
        return self.count / self.seconds if self.seconds > 0 else float("inf")


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of samples, nearest-rank."""
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


def latency_row(
    scenario: str, subject: str, samples: list[float], seconds: float, note: str = ""
) -> Row:
    """A row from per-operation latencies in seconds."""
    return Row(
        scenario,
        subject,
        len(samples),
        seconds,
        percentile(samples, 0.5) * 1000,
        percentile(samples, 0.99) * 1000,
        note,
    )


# A scenario measures in its own schema: (dsn, schema, options) -> its rows of the table.
Scenario = Callable[[str, str, argparse.Namespace], Awaitable[list[Row]]]


def machine() -> str:
    """A one-line description of this machine."""
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB RAM, {platform.platform()},"
        f" Python {platform.python_version()}"
    )


def render(rows: list[Row], server: str) -> str:
    """The results as a Markdown table."""
    lines = [
        f"machine: {machine()}",
        f"server: {server}",
        "",
        "| scenario | subject | count | ops/s | p50 ms | p99 ms | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        p50 = f"{r.p50_ms:.3f}" if r.p50_ms is not None else "-"
        p99 = f"{r.p99_ms:.3f}" if r.p99_ms is not None else "-"
        lines.append(
            f"| {r.scenario} | {r.subject} | {r.count} | {r.per_second:,.0f} | {p50} | {p99}"
            f" | {r.note} |"
        )
    return "\n".join(lines)
