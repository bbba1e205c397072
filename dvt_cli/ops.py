"""Bodies of the operations commands: parity, migrate, store rebuild, worker, dev."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import json
import signal
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from dvt_cli import devenv
from dvt_cli import output as out
from dvt_cli.plans import read_plan_bytes
from dvt_cli.session import (
    artifact_session,
    engine_options,
    load_engine,
    prepare_local_servers,
    resolve,
    store_session,
)
from dvt_cli.settings import Settings
from dvt_engine.errors import EngineUnavailable, UsageError


def _module(name: str, what: str, extra: str | None = None) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        hint = f"pip install 'dvt[{extra}]'" if extra else "upgrade dvt"
        raise UsageError(f"{what} is not available in this installation ({exc})",
                         details={"module": name, "hint": hint}) from None


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _plain(value: Any) -> Any:
    """JSON-safe data from whatever an adapter hook returned."""
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- parity -------------------------------------------------------------------------------


def parse_engines(text: str) -> list[str]:
    """``A,B`` into two or more engine names; USAGE_ERROR otherwise."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2:
        raise UsageError("--engines needs at least two engines, e.g. reference,temporal",
                         details={"engines": text})
    return names


async def parity(settings: Settings, plan_path: str, engines: list[str],
                 scenario_path: str | None) -> int:
    """Run one plan (and scenario) on several engines and compare checksums and event logs."""
    harness = _module("contract_tests.parity", "the parity harness")
    scenarios = _module("contract_tests.scenarios", "the parity harness")
    data = read_plan_bytes(plan_path)
    if scenario_path is not None:
        try:
            document_in = json.loads(await asyncio.to_thread(Path(scenario_path).read_text))
            scenario = scenarios.Scenario.from_document(document_in,
                                                        base=Path(scenario_path).parent)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read scenario {scenario_path}: {exc}",
                             details={"path": scenario_path}) from None
        # PLAN wins over the scenario's own plan file, so one scenario can drive variants.
        scenario = dataclasses.replace(scenario, plan_bytes=data, plan_name=plan_path)
    else:
        scenario = scenarios.Scenario.for_plan(data, Path(plan_path).name)
    settings = resolve(settings)
    for name in engines:
        settings = prepare_local_servers(name, replace(settings, store_url="memory://"))
    reports = []
    first, *others = engines
    for index, other in enumerate(others):
        reports.append(await _compare(harness, scenarios, scenario, settings, first, other,
                                      index))
    document = merge_parity(reports)
    if settings.json:
        out.emit_json(document)
    else:
        verdict = "equal" if document["equal"] else "DIFFERENT"
        out.say(f"parity {' vs '.join(engines)}: {verdict}")
        for name, checksum in document["checksums"].items():
            out.say(f"  {name:<10} {checksum}")
        for diff in document["differences"]:
            if isinstance(diff, dict) and "message" in diff:
                out.say(f"  - [{diff.get('kind')}] {diff['message']}")
            else:
                out.say(f"  - {diff if isinstance(diff, str) else out.dumps(diff)}")
        for report in reports:
            text = getattr(report, "diff", "")
            # The diff's own line breaks; any inside a value was escaped by ``say``.
            for line in str(text or "").split("\n") if text else ():
                out.say(line)
    return out.EXIT_OK if document["equal"] else out.EXIT_RUN_FAILED


async def _compare(harness: Any, scenarios: Any, scenario: Any, settings: Settings,
                   name_a: str, name_b: str, index: int) -> Any:
    """One comparison; each side runs over its own in-memory store with a fresh run id."""
    async with contextlib.AsyncExitStack() as stack:
        sides = []
        for label, name in ((f"{name_a}", name_a), (f"{name_b}", name_b)):
            store = await stack.enter_async_context(store_session(
                replace(settings, store_url="memory://"), quiet_memory=True))
            options = engine_options(name, settings)
            if name == "conductor":
                # Its own task namespace: a `dvt worker` on the same server (whose store does
                # not know this run) must never take the parity run's tasks.
                options["task_prefix"] = f"dvtparity{uuid.uuid4().hex[:10]}"
            engine = load_engine(name, store, options)
            stack.push_async_callback(engine.close)
            sides.append(scenarios.EngineSide(engine=engine, store=store, name=label))
        # Runs on a lasting engine server must not collide with runs of an earlier invocation.
        fresh = uuid.uuid4().hex[:12]
        context = dict(scenario.context)
        context["runId"] = f"{context.get('runId', 'parity')}-{fresh}-{index}"
        if context.get("runRequestId"):
            context["runRequestId"] = f"{context['runRequestId']}-{fresh}-{index}"
        run = dataclasses.replace(scenario, context=context)
        try:
            return await harness.run_parity(run, sides[0], sides[1])
        except scenarios.ScenarioError as exc:
            # A side never reached a state the scenario waits for: not equivalent, not a crash.
            return {"equal": False, "checksums": {},
                    "differences": [{"kind": "scenario", "message": str(exc)}]}


def merge_parity(reports: list[Any]) -> dict[str, Any]:
    """One ``{"equal", "checksums", "differences"}`` from comparisons of the first engine."""
    merged: dict[str, Any] = {"equal": True, "checksums": {}, "differences": []}
    for report in reports:
        doc = parity_document(report)
        merged["equal"] = merged["equal"] and doc["equal"]
        for label, checksum in doc["checksums"].items():
            merged["checksums"].setdefault(label, checksum)
        merged["differences"].extend(doc["differences"])
    return merged


def parity_document(report: Any) -> dict[str, Any]:
    """``{"equal", "checksums", "differences"}`` from the harness's report (contract §13)."""
    to_dict = getattr(report, "to_dict", None)
    data = to_dict() if to_dict is not None else _plain(report)
    if not isinstance(data, dict):
        raise UsageError("the parity harness returned an unexpected report")
    return {
        "equal": bool(data.get("equal")),
        "checksums": dict(data.get("checksums") or {}),
        "differences": list(data.get("differences") or []),
    }


# --- PostgreSQL administration ------------------------------------------------------------


def _pg_url(settings: Settings) -> str:
    settings = resolve(settings)
    url = settings.store_url or ""
    if not url.startswith(("postgresql:", "postgres:")):
        raise UsageError("this command works on a PostgreSQL store",
                         details={"hint": "pass --store postgresql://... (or DVT_STORE_URL), "
                                          "or start the local one with `dvt dev up`"})
    return url


async def migrate(settings: Settings) -> int:
    """Apply the store's migrations (idempotent, safe to run concurrently)."""
    url = _pg_url(settings)
    admin = _module("dvt_statestore_pg.admin", "the PostgreSQL store", "postgres")
    result = _plain(await _maybe_await(admin.migrate(url)))
    if settings.json:
        out.emit_json({"migrated": result})
    else:
        if result:
            shown = ", ".join(str(v) for v in result) if isinstance(result, list) else result
            out.say(f"applied migrations: {shown}")
        else:
            out.say("migrations: already up to date")
    return out.EXIT_OK


async def rebuild(settings: Settings) -> int:
    """Recompute every stored snapshot from the event log."""
    url = _pg_url(settings)
    admin = _module("dvt_statestore_pg.admin", "the PostgreSQL store", "postgres")
    result = _plain(await _maybe_await(admin.rebuild(url)))
    if settings.json:
        out.emit_json({"rebuilt": result})
    elif isinstance(result, dict) and "runs" in result:
        out.say(f"rebuilt {result['runs']} run snapshots from {result.get('events', '?')} "
                   f"events in {float(result.get('seconds', 0)):.2f}s")
        for key in ("differed", "raced"):
            if result.get(key):
                out.say(f"  {key}: {', '.join(map(str, result[key]))}")
        if result.get("archived"):
            out.say(f"  left as they are: {len(result['archived'])} archived runs"
                    " (`dvt store rebuild --from-cold` reads their events from the archive)")
    else:
        out.say(f"snapshots rebuilt: {result}")
    return out.EXIT_OK


# --- worker -------------------------------------------------------------------------------


def class_queues(engine: Any, resource_classes: tuple[str, ...]) -> tuple[str, ...]:
    """The step queues the engine's settings route these resource classes to.

    An unmapped class runs on the default queue, which a plain ``dvt worker`` serves: asking
    for it by class is refused rather than silently serving every step.
    """
    routes = dict(getattr(engine.settings, "class_queues", None) or {})
    unmapped = [c for c in resource_classes if c not in routes]
    if unmapped:
        raise UsageError(f"resource class {unmapped[0]!r} is not routed to a queue; its steps "
                         "run on the default queue (serve it without --resource-class)",
                         details={"resourceClasses": unmapped, "routed": sorted(routes)})
    return tuple(routes[c] for c in resource_classes)


async def worker(settings: Settings, engine_name: str, queues: tuple[str, ...] = (),
                 resource_classes: tuple[str, ...] = ()) -> int:
    """Run an engine's workers until SIGINT/SIGTERM, then drain and exit."""
    settings = resolve(settings)
    if (settings.store_url or "memory://").startswith("memory:"):
        raise UsageError("a worker needs the store its runs live in",
                         details={"hint": "set --store / DVT_STORE_URL or run `dvt dev up`"})
    address = (settings.addresses.temporal_address if engine_name == "temporal"
               else settings.addresses.conductor_url)
    if not address:
        raise EngineUnavailable(f"no {engine_name} server is configured or running",
                                details={"hint": "start one with `dvt dev up` or set its address "
                                                 "(DVT_TEMPORAL_ADDRESS / DVT_CONDUCTOR_URL)"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with store_session(settings) as store, artifact_session() as artifacts:
        engine = load_engine(engine_name, store, engine_options(engine_name, settings,
                                                                worker=False), artifacts)
        try:
            queues = tuple(dict.fromkeys([*queues, *class_queues(engine, resource_classes)]))
            if not settings.json:
                out.say(f"dvt worker: {engine_name} at {address}; Ctrl-C stops after "
                           "running steps finish")
                out.flush()
            await _serve(engine_name, engine, stop, queues)
        finally:
            await engine.close()
    return out.EXIT_OK


async def _serve(engine_name: str, engine: Any, stop: asyncio.Event,
                 queues: tuple[str, ...]) -> None:
    serve = getattr(engine, "serve_workers", None)
    if serve is not None:
        if not queues:
            await serve(stop=stop)
        elif "queues" in inspect.signature(serve).parameters:
            await serve(stop=stop, queues=list(queues))
        else:
            raise UsageError(f"the {engine_name} worker host cannot select queues",
                             details={"engine": engine_name})
        return
    if engine_name == "temporal":
        worker_mod = _module("dvt_adapters_temporal.worker", "the Temporal worker host", "temporal")
        client = await engine.client()
        workers = worker_mod.build_workers(
            client, engine.activities(), task_queue=engine.settings.task_queue,
            activity_queues=engine.settings.routed_queues(),
        )
        await worker_mod.serve(workers, stop=stop)
        return
    raise UsageError(f"the {engine_name} engine has no worker host in this installation",
                     details={"engine": engine_name})


# --- dev ----------------------------------------------------------------------------------

PARTS = ("postgres", "temporal", "conductor")


def dev_status() -> dict[str, Any]:
    """What of the local dev setup is running."""
    return {"postgres": devenv.postgres_status(), "temporal": devenv.temporal_status(),
            "conductor": devenv.conductor_status()}


def _print_dev(status: dict[str, Any]) -> None:
    for part in PARTS:
        info = status.get(part) or {}
        if info.get("running"):
            where = info.get("url") or info.get("address") or info.get("serverUrl") or ""
            out.say(f"{part:<10} running  {where}  (pid {info.get('pid')})")
        elif info.get("installed") is False:
            out.say(f"{part:<10} not installed")
        else:
            out.say(f"{part:<10} stopped")


async def dev_up(settings: Settings, parts: list[str]) -> int:
    """Start the chosen local servers in the background; they stay up until `dvt dev down`."""
    # Each *_up prints one line on stderr for a server it started (none for one already up).
    for part in parts:
        if part == "postgres":
            await asyncio.to_thread(devenv.postgres_up)
            admin = importlib.import_module("dvt_statestore_pg.admin") if _has(
                "dvt_statestore_pg.admin") else None
            if admin is not None:
                await _maybe_await(admin.migrate(devenv.postgres_status()["url"]))
        elif part == "temporal":
            await asyncio.to_thread(devenv.temporal_up)
        elif part == "conductor":
            await asyncio.to_thread(devenv.conductor_up)
    status = dev_status()
    if settings.json:
        out.emit_json(status)
    else:
        _print_dev(status)
        store = status["postgres"].get("url")
        if store:
            out.say(f"commands now use the store {store} unless --store is given")
    return out.EXIT_OK


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def default_dev_parts() -> list[str]:
    """What `dvt dev up` starts without options: what is installed, Conductor only on request."""
    parts: list[str] = []
    if devenv.postgres_available():
        parts.append("postgres")
    if devenv.temporal_available():
        parts.append("temporal")
    return parts


async def dev_down(settings: Settings, purge: bool = False) -> int:
    """Stop every local server; their data stays under DVT_HOME unless ``purge``."""
    stopped = {
        "temporal": await asyncio.to_thread(devenv.temporal_down),
        "conductor": await asyncio.to_thread(devenv.conductor_down),
        "postgres": await asyncio.to_thread(devenv.postgres_down),
    }
    removed = await asyncio.to_thread(devenv.purge) if purge else []
    if settings.json:
        out.emit_json({"stopped": stopped, "removed": removed})
    else:
        for part, was in stopped.items():
            out.say(f"{part:<10} {'stopped' if was else 'was not running'}")
        for path in removed:
            out.say(f"removed {path}")
    return out.EXIT_OK


async def show_dev(settings: Settings) -> int:
    """Print what of the local dev setup is running."""
    status = await asyncio.to_thread(dev_status)
    if settings.json:
        out.emit_json(status)
    else:
        _print_dev(status)
    return out.EXIT_OK
