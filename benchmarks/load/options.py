"""The load harness's options (`nox -s load -- --rate 1000/min --minutes 10 ...`) and targets."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from benchmarks.load.servers import CHAOS_KINDS

#: ``temporal-bare``: the same dev server and load, but a bare temporalio workflow with one
#: no-op activity and no dvt or PostgreSQL (benchmarks/load/bare_temporal.py), to tell the
#: server's share of a Temporal run's latency from dvt's.
ENGINES = ("temporal", "reference", "conductor", "temporal-bare")
#: The bare mode refuses what only dvt runs have: faults, PAUSE storms, step chains (parse).
BARE = "temporal-bare"
_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Targets:
    """The pass/fail line (docs/benchmarks.md, "Load and chaos")."""

    runs_per_min: float | None = None
    steps_per_min: float | None = None
    p99_drift: float = 0.10
    rss_growth: float = 0.10
    recovery_s: float = 30.0
    pause_p99_s: float = 1.0


#: Temporal + PG, 1-step runs: 1,000 runs/min; reference + PG: 10,000 steps/min.
TARGETS = {"temporal": Targets(runs_per_min=1000.0), "reference": Targets(steps_per_min=10_000.0),
           "conductor": Targets(), BARE: Targets(runs_per_min=1000.0)}


@dataclass(frozen=True)
class LoadOptions:
    """One load run: how fast, how long, on which engine, with which faults."""

    engine: str = "temporal"
    rate_per_s: float = 1000 / 60
    minutes: float = 10.0
    steps: int = 1
    step_ms: int = 0
    chaos: tuple[str, ...] = ()
    signals_per_s: float = 0.0
    workers: int = 1
    drain_s: float = 180.0
    max_in_flight_starts: int = 64
    json_path: str | None = None
    #: The Temporal dev server as shipped, with its transfer-queue cap (see dvt_local.temporal).
    stock_server: bool = False
    #: temporal-bare: start each workflow with dvt's search attributes and memo.
    dvt_attributes: bool = False
    targets: Targets = field(default_factory=Targets)

    @property
    def seconds(self) -> float:
        """The load phase's length."""
        return self.minutes * 60.0


def parse_rate(text: str) -> float:
    """``1000/min``, ``20/s`` or a bare number (per second) as runs per second."""
    count, _, unit = text.partition("/")
    try:
        value = float(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r}") from None
    per = _UNITS.get(unit.strip() or "s")
    if per is None or value <= 0:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 1000/min, 20/s)")
    return value / per


def parse_chaos(text: str) -> tuple[str, ...]:
    """``pg-restart,worker-kill`` or ``all``; unknown names are refused."""
    if not text:
        return ()
    names = list(CHAOS_KINDS) if text == "all" else [n.strip() for n in text.split(",") if n]
    unknown = sorted(set(names) - set(CHAOS_KINDS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown chaos {unknown}; known: {', '.join(CHAOS_KINDS)} or all")
    return tuple(names)


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.load`."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description="Drive runs through the host API against real local servers, optionally "
                    "with faults; print throughput, latency, store lag, memory and a verdict.")
    p.add_argument("--engine", choices=ENGINES, default="temporal")
    p.add_argument("--rate", type=parse_rate, default=1000 / 60,
                   help="runs started per time unit: 1000/min (default), 20/s")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the load phase")
    p.add_argument("--steps", type=int, default=1, help="steps per run, a chain")
    p.add_argument("--step-ms", type=int, default=0,
                   help="each step sleeps this long (0: a noop step)")
    p.add_argument("--chaos", type=parse_chaos, default=(),
                   help=f"comma list of {', '.join(CHAOS_KINDS)}, or all")
    p.add_argument("--signals", type=float, default=0.0,
                   help="PAUSE signals a second across running runs (each followed by RESUME)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (not reference)")
    p.add_argument("--drain", type=float, default=180.0,
                   help="seconds to wait after the load for every run to end")
    p.add_argument("--json", dest="json_path", help="also write the report as JSON here")
    p.add_argument("--stock-server", action="store_true",
                   help="keep the Temporal dev server's transfer-queue cap (20 reads a second)")
    p.add_argument("--with-dvt-attributes", dest="dvt_attributes", action="store_true",
                   help=f"{BARE}: start each workflow with dvt's search attributes and memo")
    return p


def parse(argv: list[str] | None = None) -> LoadOptions:
    """Options from a command line."""
    a = parser().parse_args(argv)
    if a.steps < 1 or a.minutes <= 0 or a.workers < 1:
        parser().error("--steps, --minutes and --workers must be positive")
    if a.dvt_attributes and a.engine != BARE:
        parser().error(f"--with-dvt-attributes is for --engine {BARE}")
    if a.engine == BARE and (a.chaos or a.signals or a.steps != 1 or a.step_ms):
        parser().error(f"--engine {BARE} runs one no-op activity a run: no --chaos, --signals, "
                       "--steps or --step-ms")
    return LoadOptions(engine=a.engine, rate_per_s=a.rate, minutes=a.minutes, steps=a.steps,
                       step_ms=a.step_ms, chaos=a.chaos, signals_per_s=a.signals,
                       workers=a.workers, drain_s=a.drain, json_path=a.json_path,
                       stock_server=a.stock_server, dvt_attributes=a.dvt_attributes,
                       targets=TARGETS[a.engine])
